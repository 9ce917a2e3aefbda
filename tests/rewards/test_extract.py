"""Hand-written cases for ``extract_answer``: the ``# Answer`` marker rule and each fallback."""

import pytest

from mstar_fast.rewards import extract_answer

MARKER_CASES = [
    # the docs/recipe.md format
    ("Step one.\n\nStep two.\n\n# Answer\n\n12", "12"),
    ("# Answer\n\nB", "B"),
    # the LAST marker wins
    ("# Answer\n\n3\n\nWait, recount.\n\n# Answer\n\n4", "4"),
    # forgiving marker: case, number of #, colon, same line
    ("reasoning\n\n## answer: 7", "7"),
    ("reasoning\n\n#Answer\n\n7", "7"),
    # only the first non-empty line after the marker
    ("# Answer\n\n5\n\nThis is because 2 + 3 = 5.", "5"),
    # wrappers are removed
    ("# Answer\n\n$\\frac{1}{2}$", "\\frac{1}{2}"),
    ("# Answer\n\n\\boxed{42}", "42"),
    ("# Answer\n\n**C**", "C"),
    ("# Answer\n\n3.5.", "3.5"),
    ("# Answer\n\nThe answer is 9.", "9"),
    ("# Answer\n\n4:30", "4:30"),
    ("# Answer\n\n-3/4", "-3/4"),
    # "# Answers" is not the marker
    ("# Answers we tried: 3 and 4", "4"),
    # a marker with nothing after it (truncated) is no answer, even with numbers before it
    ("There are 3 red and 4 blue shapes.\n\n# Answer\n\n", None),
    ("There are 3 red and 4 blue shapes.\n\n# Answer", None),
]

FALLBACK_CASES = [
    # 1. "The answer is X" / "Answer: X" (last one)
    ("So the answer is 17.", "17"),
    ("The answer is 3.5. Then we stop.", "3.5"),
    ("First I thought the answer is 2. But the final answer is 3.", "3"),
    ("Answer: (B)", "B"),  # an option letter comes out bare
    ("Final Answer: $x^2$", "x^2"),
    ("The answer is **B**.", "B"),
    ("The answer isn't obvious, but we count 6", "6"),
    # 2. last \boxed{...}, braces balanced
    ("so we get \\boxed{3} and then \\boxed{\\frac{1}{2}} finally", "\\frac{1}{2}"),
    ("hence \\boxed{x^{2}+1}", "x^{2}+1"),
    # 3. a lone option letter (whole text or last line)
    ("B", "B"),
    ("(c)", "C"),
    ("C.", "C"),
    ("Looking at the figure, the largest is the second.\nOption D", "D"),
    # ... but "A" as a word is not an option, and a bare lower-case "a" is an article
    ("A triangle has sides", None),
    ("A triangle has 3 sides", "3"),
    ("a", None),
    ("Apple", None),
    # 4. the last number
    ("I count 12 apples and 3.5 pears", "3.5"),
    ("The total is 1,234 dollars", "1,234"),
    ("ratio 3/4 overall", "3/4"),
    ("about 45% of them", "45%"),
    ("It is 4:30 now", "4:30"),
    ("the temperature fell to -7 degrees", "-7"),
    # digits inside words are not numbers
    ("see figure x2 for details", None),
    # nothing at all
    ("I do not know.", None),
    ("", None),
]


@pytest.mark.parametrize("text,expected", MARKER_CASES)
def test_marker_rule(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text,expected", FALLBACK_CASES)
def test_fallbacks(text, expected):
    assert extract_answer(text) == expected


def test_none_and_type_errors():
    assert extract_answer(None) is None
    with pytest.raises(ValueError, match="must be a str"):
        extract_answer(12)  # type: ignore[arg-type]


def test_fallback_off_and_custom_marker():
    assert extract_answer("The answer is 5", fallback=False) is None
    assert extract_answer("Reasoning.\n\nFinal: 8", marker="Final") == "8"
    # marker=None: fallbacks only, even when a marker is present
    assert extract_answer("# Answer\n\n", marker=None) is None
    assert extract_answer("x is 3\n\n# Answer\n\n", marker=None) == "3"
