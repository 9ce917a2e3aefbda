"""Wrong answers that a lenient grader rewards. Every row must be judged wrong: a false reward trains
the self-evolving loop on a wrong response, which is worse than a missed right one."""

import pytest

from mstar_fast.rewards import answers_match, extract_answer

C4 = ["3", "5", "7", "9"]
ANGLES = ["30", "45", "60", "90"]
COLORS = ["blue", "red", "green", "yellow"]  # B is red, not blue
YN = ["Yes", "No"]

# (response, gold, choices, precision)
WRONG = [
    # numbers from the reasoning mapped onto an option
    ("Option D (9) counts the border twice, so B is the correct answer.", "D", C4, None),
    ("Option D (9) counts the border twice.", "D", C4, None),
    ("(D) 9 would double count. I am not sure.", "D", C4, None),
    ("Choice D says 9 but the figure shows fewer.", "D", C4, None),
    ("A. 3\nB. 5\nC. 7\nD. 9\nCounting gives 9.", "D", C4, None),
    ("If we count the border we get 9, which is option D; without it we get 5.", "D", C4, None),
    # two options asserted
    ("The answer is B or D.", "D", C4, None),
    ("The answer is B or D.", "B", C4, None),
    ("Answer: A, B, C, D", "A", C4, None),
    ("Answer: (B) and (D)", "D", C4, None),
    ("# Answer\n\nB/D", "D", C4, None),
    ("The answer is B. Wait, the answer is D.", "D", C4, None),
    ("B is the correct answer, so \\boxed{D}", "D", C4, None),
    ("# Answer\n\nB\n\nActually:\n\n# Answer\n\nD", "D", C4, None),
    # a letter with the text of another option
    ("# Answer\n\nB (9)", "D", C4, None),
    ("# Answer\n\nB (9)", "B", C4, None),
    ("# Answer\n\nA. 90", "A", ANGLES, None),
    # the wrong letter, in every wrapper
    ("**Answer:** B", "D", C4, None),
    ("The answer is $\\boxed{\\text{(C)}}$", "D", C4, None),
    ("The answer is \\textbf{C}.", "D", C4, None),
    ("# Answer\n\nC. 7", "D", C4, None),
    ("The answer is D, not B.", "B", C4, None),
    ("Option B is correct.", "D", C4, None),
    ("B", "D", C4, None),
    ("(b)", "D", C4, None),
    # letters outside the options, words that start with a letter
    ("# Answer\n\nE", "A", C4, None),
    ("# Answer\n\nBlue", "B", COLORS, None),
    ("# Answer\n\nA triangle", "A", C4, None),
    ("a", "A", C4, None),
    # numbers: near misses, substrings, signs, scale
    ("# Answer\n\n2", "12", None, None),
    ("# Answer\n\n12", "2", None, None),
    ("# Answer\n\n120", "12", None, None),
    ("# Answer\n\n-3", "3", None, None),
    ("# Answer\n\n3", "-3", None, None),
    ("# Answer\n\n1,2", "12", None, None),
    ("\\boxed{1{,}5}", "15", None, None),
    ("# Answer\n\n9\\,50", "950", None, None),
    ("# Answer\n\n3.1", "3.14", None, None),
    ("# Answer\n\n3.15", "3.14159", None, None),
    ("# Answer\n\n0.3", "1/3", None, None),
    ("# Answer\n\n50", "0.5", None, None),
    ("# Answer\n\n5%", "0.5", None, None),
    ("# Answer\n\n1e3", "100", None, None),
    ("# Answer\n\napproximately 3", "3.14", None, None),
    ("# Answer\n\nabout 5 cm", "6", None, None),
    ("# Answer\n\n3 or 4", "3", None, None),
    ("# Answer\n\n3 cm", "4", None, None),
    # precision: Python round, never a looser match
    ("# Answer\n\n1.25", "1.3", None, 1),
    ("# Answer\n\n1.34", "1.3", None, 2),
    ("# Answer\n\n6.5", "7", None, 0),
    # times
    ("# Answer\n\n4:30", "4:15", None, None),
    ("# Answer\n\n4:30", "430", None, None),
    ("# Answer\n\n4:30 pm", "4:30 am", None, None),
    # text
    ("The answer is Yes, because the red bar is taller.", "No", YN, None),
    ("# Answer\n\nNo, because it is taller", "Yes", YN, None),
    ("# Answer\n\nred", "blue", None, None),
    ("# Answer\n\neast", "seat", None, None),  # same letters: never a symbolic product
    ("# Answer\n\n12 apples", "twelve", None, None),
    # symbolic near misses
    ("# Answer\n\n$x^2$", "x^3", None, None),
    ("# Answer\n\n$\\sqrt{8}$", "3\\sqrt{2}", None, None),
    ("# Answer\n\n$\\frac{\\pi}{3}$", "\\frac{\\pi}{2}", None, None),
    ("# Answer\n\n$2x+1$", "2x-1", None, None),
    # no answer at all: truncated, empty, hedged
    ("There are 3 red and 4 blue shapes, so 7 in total.\n\n# Answer\n\n", "7", None, None),
    ("", "7", None, None),
    ("I cannot tell from the image.", "No", YN, None),
    ("The answer is", "7", None, None),
]


@pytest.mark.parametrize("response,gold,choices,precision", WRONG)
def test_wrong_answer_is_judged_wrong(response, gold, choices, precision):
    assert answers_match(extract_answer(response), gold, choices, precision) is False


def test_adversarial_set_is_large():
    assert len(WRONG) >= 60


def test_expression_is_not_its_first_letter():
    # "A - B" is an expression, not option A with an explanation; "B, C" names two options.
    assert extract_answer("# Answer\n\nA - B") == "A - B"
    assert not answers_match(extract_answer("# Answer\n\nA - B"), "A")
    assert not answers_match(extract_answer("# Answer\n\nA - B"), "A", ["1", "2"])
    assert extract_answer("# Answer\n\nB, C") is None
