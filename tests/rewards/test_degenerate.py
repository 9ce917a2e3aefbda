"""Degenerate sampled responses (a token repeated until the length limit) must be graded in linear time:
several of these took minutes with rescanning regexes. The bound is loose (quadratic took 100+ s)."""

import time

import pytest

from mstar_fast.rewards import answers_match, extract_answer

N = 100_000
DEGENERATE = {
    "stars": "*" * N, "underscores": "_" * N, "dollars": "$" * N, "spaces": " " * N, "parens": "(" * N,
    "boxed": "\\boxed{" * (N // 7), "text": "\\text{" * (N // 6), "answer_is": "the answer is " * (N // 14),
    "bold_answer": "**Answer:** " * (N // 12), "markers": "# Answer\n" * (N // 9), "b_or": "B or " * (N // 5),
    "digits": "9" * N, "groups": "1," * (N // 2), "letters": "A. " * (N // 3), "because": "because " * (N // 8),
}


@pytest.mark.parametrize("name", sorted(DEGENERATE))
def test_degenerate_response_is_fast(name):
    text = DEGENERATE[name]
    t0 = time.perf_counter()
    ans = extract_answer(text)
    ok = answers_match(ans, "12", ["1", "12"])
    for piece in (text[:900], text[:300]):
        answers_match(piece, "x^2+1")
    assert time.perf_counter() - t0 < 5.0
    assert ok is False


def test_overlong_prediction_never_matches():
    long = "x" * 1001
    assert not answers_match(long, long)  # documented MAX_ANSWER_CHARS bound
    assert answers_match("x" * 999, "x" * 999)
