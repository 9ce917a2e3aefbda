"""Rewards: final-answer extraction, answer matching, grading of sampled responses (the binary outcome reward) and majority / weighted
vote for pseudo-labels. Extraction and
the option-letter rules are plain Python; symbolic equivalence is ``math-verify`` (a core dependency).
The rules, in order, with examples: docs/answers.md."""

from mstar_fast.rewards.extract import extract_answer
from mstar_fast.rewards.grade import grade_samples
from mstar_fast.rewards.match import answers_match, check_answer, math_verify_available
from mstar_fast.rewards.vote import VoteGroup, majority_vote, vote_groups, weighted_vote

__all__ = [
    "extract_answer",
    "answers_match",
    "check_answer",
    "grade_samples",
    "math_verify_available",
    "majority_vote",
    "weighted_vote",
    "vote_groups",
    "VoteGroup",
]
