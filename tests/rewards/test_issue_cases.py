"""End-to-end verdicts (``answers_match(extract_answer(response), gold, choices, precision)``) for the
reported cases and the variants of each kind they belong to. Every row states the expected verdict."""

import pytest

from mstar_fast.rewards import answers_match, extract_answer

C2 = ["3", "5"]
C4 = ["3", "5", "7", "9"]
ANGLES = ["30", "45", "60"]
YN = ["Yes", "No"]


def verdict(response, gold, choices=None, precision=None):
    return answers_match(extract_answer(response), gold, choices, precision)


# (response, gold, choices, expected verdict)
REPORTED = [
    ("**Answer:** B", "B", C2, True),
    ("**Answer: 12**", "12", None, True),
    ("The answer is $\\boxed{\\text{(C)}}$", "C", ANGLES, True),
    ("The total is $\\boxed{9{,}500}$.", "9500", None, True),
    ("# Answer\n\nB (5)", "B", C4, True),
    ("Answer: $B", "B", C4, True),
    ("The answer is Yes, because the red bar is taller.", "Yes", YN, True),
    ("Option D (9) counts the border twice, so B is the correct answer.", "D", C4, False),
]

# Markdown emphasis around the answer markers.
EMPHASIS = [
    ("**Answer:** B", "B", C4, True),
    ("__Answer__: B", "B", C4, True),
    ("*Answer*: B", "B", C4, True),
    ("**Answer**: 12", "12", None, True),
    ("__Answer: 12__", "12", None, True),
    ("**Final Answer:** 12", "12", None, True),
    ("The **answer is** 12.", "12", None, True),
    ("Some steps.\n\n# **Answer**\n\n7", "7", None, True),
    ("Some steps.\n\n## __Answer__\n\n**7**", "7", None, True),
    ("Some steps.\n\n# *Answer*:\n\nC", "C", ANGLES, True),
    ("**Answer:** B", "A", C4, False),
    ("**Answer: 12**", "13", None, False),
]

# Option letters inside \boxed{} / \text{} / \textbf{}, in "(C)", "C.", "C)", or followed by their
# option text or an explanation.
LETTER_FORMS = [
    ("The answer is $\\boxed{C}$", "C", ANGLES, True),
    ("so \\boxed{\\text{C}}", "C", ANGLES, True),
    ("so \\boxed{\\textbf{(C)}}", "C", ANGLES, True),
    ("so \\boxed{\\mathrm{C}}", "C", ANGLES, True),
    ("The answer is \\textbf{C}.", "C", ANGLES, True),
    ("Answer: (C)", "C", ANGLES, True),
    ("Answer: C.", "C", ANGLES, True),
    ("Answer: C)", "C", ANGLES, True),
    ("# Answer\n\n(C) 60", "C", ANGLES, True),
    ("# Answer\n\nC. 60", "C", ANGLES, True),
    ("# Answer\n\nC) 60", "C", ANGLES, True),
    ("# Answer\n\nC: 60", "C", ANGLES, True),
    ("# Answer\n\nC (60)", "60", ANGLES, True),
    ("# Answer\n\nC - the largest angle", "C", ANGLES, True),
    ("The answer is C because the angle is obtuse.", "C", ANGLES, True),
    ("The answer is C, since the other two are acute.", "C", ANGLES, True),
    ("The correct option is (B).", "B", ANGLES, True),
    ("Looking again.\nOption B", "B", ANGLES, True),
    ("B (45)", "B", ANGLES, True),
    ("Option B is correct.", "B", ANGLES, True),
    ("Hence (B) is the correct answer.", "B", ANGLES, True),
    ("The answer is \\boxed{\\text{(C)}}", "B", ANGLES, False),
    ("# Answer\n\nC. 60", "A", ANGLES, False),
    ("The answer is C because the angle is obtuse.", "B", ANGLES, False),
]

# LaTeX digit-group separators and thin spaces.
DIGIT_GROUPS = [
    ("The total is $\\boxed{9{,}500}$.", "9500", None, True),
    ("\\boxed{1{,}234{,}567}", "1234567", None, True),
    ("\\boxed{9\\,500}", "9500", None, True),
    ("\\boxed{9\\!500}", "9500", None, True),
    ("The answer is 9\u2009500.", "9500", None, True),
    ("The answer is 9\u202f500.", "9500", None, True),
    ("# Answer\n\n$12{,}000$", "12000", None, True),
    ("The total is $\\boxed{9{,}500}$.", "950", None, False),
    ("\\boxed{9\\,500}", "95", None, False),
    ("\\boxed{1{,}5}", "15", None, False),  # not a group of three: no number
]

# Hedged numbers.
HEDGES = [
    ("The answer is approximately 3.14.", "3.14", None, True),
    ("The answer is about 5 cm.", "5", None, True),
    ("# Answer\n\naround 12", "12", None, True),
    ("# Answer\n\nroughly 0.5", "1/2", None, True),
    ("# Answer\n\n$\\approx 3.14$", "3.14", None, True),
    ("# Answer\n\nx \\approx 2.5", "2.5", None, True),
    ("# Answer\n\n≈ 7", "7", None, True),
    ("The answer is approximately 3.14.", "3.15", None, False),
    ("The answer is about 5 cm.", "6", None, False),
]

# MathVista precision: Python's round on both sides.
PRECISION = [
    ("# Answer\n\n1.26", "1.3", None, 1, True),
    ("# Answer\n\n1.25", "1.2", None, 1, True),   # round(1.25, 1) == 1.2
    ("# Answer\n\n1.25", "1.3", None, 1, False),
    ("# Answer\n\n2.675", "2.67", None, 2, True),  # binary float: round(2.675, 2) == 2.67
    ("# Answer\n\n0.125", "0.12", None, 2, True),
    ("# Answer\n\n3.14159", "3.14", None, 2, True),
    ("# Answer\n\n3.1", "3.14", None, 2, False),
    ("# Answer\n\n7.0", "7", None, 0, True),
    ("# Answer\n\n6.5", "7", None, 0, False),      # round(6.5) == 6 (half to even)
    ("# Answer\n\napproximately 2.35", "2.4", None, 1, True),
]

# A letter followed by an explanation / text answer followed by an explanation.
EXPLANATIONS = [
    ("The answer is Yes, because the red bar is taller.", "Yes", YN, True),
    ("The answer is No, since the lines never meet.", "No", YN, True),
    ("# Answer\n\nYes, because the red bar is taller", "Yes", YN, True),
    ("# Answer\n\nNo because they are parallel", "No", YN, True),
    ("The answer is Yes, because the red bar is taller.", "No", YN, False),
    ("The answer is B, as the bar for B is taller.", "B", C4, True),
    ("The answer is D, not B.", "D", C4, True),
    ("The answer is D, not B.", "B", C4, False),
]

# The last-number fallback never maps a number from the reasoning onto an option.
LAST_NUMBER = [
    ("Option D (9) counts the border twice, so B is the correct answer.", "D", C4, False),
    ("Option D (9) counts the border twice.", "D", C4, False),
    ("(A) 3 is too few; choice D has 9.", "D", C4, False),
    ("A. 3\nB. 5\nC. 7\nD. 9\nI would count 9.", "D", C4, False),
    ("I count 12 apples", "12", None, True),  # no options: the fallback still works
]

ALL = REPORTED + EMPHASIS + LETTER_FORMS + DIGIT_GROUPS + HEDGES + EXPLANATIONS + LAST_NUMBER


@pytest.mark.parametrize("response,gold,choices,expected", ALL)
def test_verdict(response, gold, choices, expected):
    assert verdict(response, gold, choices) is expected


@pytest.mark.parametrize("response,gold,choices,precision,expected", PRECISION)
def test_precision_verdict(response, gold, choices, precision, expected):
    assert verdict(response, gold, choices, precision) is expected


def test_last_number_fallback_off_with_choices():
    # No option is mentioned, but the caller says the prompt has options: the response must name one.
    text = "I counted 9 sides, but that counts the border twice."
    assert extract_answer(text) == "9"
    assert extract_answer(text, choices=C4) is None
    assert not answers_match(extract_answer(text, choices=C4), "D", C4)


AMBIGUOUS = [
    "The answer is B or C.",
    "Answer: A, C",
    "Answer: (A) and (C)",
    "# Answer\n\nB/C",
    "The answer is B.\n\nOn second thought, the answer is C.",
    "B is the correct answer. So \\boxed{C}.",
    "# Answer\n\nB\n\nHmm.\n\n# Answer\n\nC",
    "The answer is B or C, because both are large.",
]


@pytest.mark.parametrize("text", AMBIGUOUS)
def test_two_letters_asserted_give_no_answer(text):
    assert extract_answer(text) is None
    for gold in "ABCD":
        assert not answers_match(extract_answer(text), gold, C4)




# Mathematics that looks like option talk, and option talk that is reasoning.
NOT_OPTIONS = [
    ("f(x) = 2x + 1, so f(3) = 7", "7", None, True),
    ("P(A) = 0.3 and P(B) = 0.5, so P(A and B) = 0.15", "0.15", None, True),
    ("Statement A is correct, but the answer is C.", "C", ANGLES, True),
    ("# Answer\n\nOption B (45)", "B", ANGLES, True),
    ("# Answer\n\nOption B (60)", "B", ANGLES, False),
]


@pytest.mark.parametrize("response,gold,choices,expected", NOT_OPTIONS)
def test_not_options(response, gold, choices, expected):
    assert verdict(response, gold, choices) is expected
