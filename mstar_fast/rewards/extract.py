"""Final-answer extraction from a model response.

The M-STaR output format ends every response with ``# Answer\\n\\n<answer>`` (PAPER.md, "Warm-up"), so
the default rule takes what follows the *last* ``# Answer`` marker. Responses that do not follow the
format (base models, MathVista-style prompts) go through MathVista-style fallbacks, in this order:

1. ``The answer is X`` / ``Final answer: X`` / ``Answer: X`` (the last one in the text);
2. the last ``\\boxed{...}`` expression (braces balanced);
3. a lone option letter: the whole response, or its last line, is ``B``, ``(B)``, ``B.`` or ``Option B``;
4. the last number in the text (integers, decimals, fractions ``a/b``, percentages, ``h:mm`` times).

A marker followed by nothing (a response cut off by the token limit) yields ``None``: the fallbacks would
otherwise pick a number out of the unfinished reasoning and reward a truncated sample.

**contract** ``extract_answer(text) -> str | None``.
"""

from __future__ import annotations

import re

__all__ = ["extract_answer", "clean_answer", "last_boxed", "DEFAULT_MARKER"]

DEFAULT_MARKER = "# Answer"

# "the answer is", "the final answer is", "final answer:", "answer:" (word boundary before "answer").
_ANSWER_IS = re.compile(
    r"(?:\bthe\s+)?(?:\bfinal\s+)?\banswer\s*(?:is\b\s*:?|:|=)\s*",
    re.IGNORECASE,
)
# A number as people write it: -1,234.5 | .5 | 3/4 | 12% | 1e-3; a time h:mm is tried first.
_NUMBER = re.compile(
    r"(?<![\w.])(?:\d{1,2}:\d{2}(?!\d)"
    r"|[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:/\d+)?(?:[eE][-+]?\d+)?%?)"
)
_LONE_LETTER = re.compile(
    r"^(?:(?:the\s+)?(?:correct\s+)?(?:option|choice|answer)\s*(?:is\s*)?:?\s*)?"
    r"[\(\[]?([A-Z])[\)\]]?[.:]?$",
    re.IGNORECASE,
)


def _marker_regex(marker: str) -> re.Pattern[str]:
    """A forgiving regex for ``marker``: any run of ``#`` and whitespace, case-insensitive, optional colon."""
    body = marker.lstrip("#").strip()
    hashes = r"#+[ \t]*" if marker.startswith("#") else ""
    words = r"[ \t]+".join(re.escape(w) for w in body.split())
    return re.compile(hashes + words + r"\b[ \t]*:?", re.IGNORECASE)


_DEFAULT_MARKER_RE = _marker_regex(DEFAULT_MARKER)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced; None if
    there is none or its braces never close."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
    return None


def _cut_sentence(s: str) -> str:
    """First line of ``s``, cut at the first sentence end (a period that is not a decimal point)."""
    s = s.strip()
    s = s.split("\n", 1)[0]
    m = re.search(r"[.。](?=\s|$)", s)
    if m:
        s = s[: m.start()]
    return s.strip()


def clean_answer(ans: str) -> str | None:
    """Tidy an answer span: unwrap ``\\boxed{}``, ``$...$``, ``\\(...\\)``, markdown bold, quotes, an
    ``Answer:`` prefix and a trailing period. Returns None when nothing is left."""
    s = ans.strip()
    boxed = last_boxed(s)
    if boxed is not None:
        s = boxed
    found = list(_ANSWER_IS.finditer(s))
    m = found[-1] if found else None
    if m is not None and s[m.end():].strip():
        s = _cut_sentence(s[m.end():])
    for _ in range(3):  # wrappers can nest: **$12$**
        before = s
        s = s.strip()
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"),
                            ("*", "*"), ("`", "`"), ('"', '"'), ("'", "'")):
            if len(s) > len(left) + len(right) - 1 and s.startswith(left) and s.endswith(right):
                s = s[len(left): len(s) - len(right)].strip()
        s = s.rstrip(".。").strip()  # a trailing full stop ("12." is 12 anyway)
        if s == before:
            break
    return s or None


def _after_marker(text: str, marker_re: re.Pattern[str]) -> str | None:
    """Text after the last marker (first non-empty line), or "" when the marker ends the text, or None
    when there is no marker."""
    found = list(marker_re.finditer(text))
    last = found[-1] if found else None
    if last is None:
        return None
    rest = text[last.end():]
    for line in rest.split("\n"):
        if line.strip():
            return line.strip()
    return ""


def extract_answer(text: str | None, marker: str | None = DEFAULT_MARKER, fallback: bool = True) -> str | None:
    """The final answer of a response, or None when it has none.

    Args:
        text: the response text.
        marker: the answer marker (default ``"# Answer"``; matched case-insensitively, any number of
            ``#``). ``None`` skips the marker rule.
        fallback: whether to try the MathVista-style fallbacks when there is no marker.

    Returns:
        The answer string (wrappers such as ``$...$`` and ``\\boxed{}`` removed), or None.
    """
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"extract_answer: text must be a str, got {type(text).__name__}")
    if marker is not None:
        marker_re = _DEFAULT_MARKER_RE if marker == DEFAULT_MARKER else _marker_regex(marker)
        after = _after_marker(text, marker_re)
        if after is not None:
            return clean_answer(after) if after else None
    if not fallback:
        return None

    # 1. "The answer is X" (last occurrence with something after it).
    for m in reversed(list(_ANSWER_IS.finditer(text))):
        span = _cut_sentence(text[m.end():])
        if span:
            got = clean_answer(span)
            if got:
                return got
    # 2. last \boxed{...}
    boxed = last_boxed(text)
    if boxed:
        return clean_answer(boxed)
    # 3. a lone option letter: the whole response or its last line.
    stripped = text.strip().strip("*").strip()
    lines = [ln.strip().strip("*").strip() for ln in stripped.split("\n") if ln.strip()]
    for cand in (stripped, lines[-1] if lines else ""):
        m = _LONE_LETTER.match(cand)
        if m:
            letter = m.group(1)
            # A bare lower-case "a" is an article, not an option; "(b)" or "Option b" is an option.
            if letter.isupper() or len(cand.rstrip(".:")) > 1:
                return letter.upper()
    # 4. last number.
    nums = [m.group(0) for m in _NUMBER.finditer(text) if re.search(r"\d", m.group(0))]
    if nums:
        return nums[-1].replace("−", "-")
    return None
