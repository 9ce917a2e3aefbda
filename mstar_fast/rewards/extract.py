"""Final-answer extraction from a model response.

The M-STaR output format ends every response with ``# Answer\\n\\n<answer>``, so the first rule takes
what follows the *last* ``# Answer`` marker. Responses that do not follow the format (base models,
MathVista-style prompts) go through fallbacks. The full order (``docs/answers.md`` has examples):

1. **Marker**: the first non-empty line after the last ``# Answer`` (any number of ``#``, any case, an
   optional colon, markdown emphasis allowed: ``# **Answer**``). A marker followed by nothing (a response
   cut off by the token limit) yields ``None``: the fallbacks would otherwise pick a number out of the
   unfinished reasoning and reward a truncated sample.
2. **Statements**: ``The answer is X`` / ``Final answer: X`` / ``Answer: X`` (emphasis allowed:
   ``**Answer:** X``, ``__Answer__: X``), ``the correct option is X``, and for option letters ``X is the
   (correct) answer`` / ``option X is correct``. The last statement wins.
3. **Boxed**: the last ``\\boxed{...}`` (braces balanced).
4. **Lone option letter**: the whole response, or its last line, is ``B``, ``(B)``, ``B.``, ``B (5)``,
   ``Option B``.
5. **Last number** in the text (integers, decimals, ``a/b``, percentages, ``h:mm``). Skipped when the
   response talks about options (``(B)``, ``option B``, a line starting ``B.``) or when the caller passes
   ``choices``: a number taken from reasoning about options must never be read as picking an option.

Every span is then cleaned (:func:`clean_answer`): wrappers (``$``, ``\\(\\)``, ``\\boxed{}``,
``\\text{}``, ``\\textbf{}``, markdown emphasis, quotes) go, an explanation after the answer goes
(``Yes, because ...`` -> ``Yes``), an option letter followed by an explanation is reduced to the letter
(``(C)``, ``C.``, ``D because ...``, ``C - the largest`` -> the letter), and an option letter followed by
its option text stays whole (``B (5)``, ``C. 60``) so that matching can check that the text is the text
of that option.

**Ambiguity gives no answer.** A span naming two option letters (``B or C``, ``A, C``), or statements /
markers that assert different option letters (``the answer is B ... \\boxed{C}``), yield ``None``: a
false reward is worse than a missed one.

**contract** ``extract_answer(text) -> str | None``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["extract_answer", "clean_answer", "last_boxed", "option_letter", "lead_letter", "DEFAULT_MARKER"]

DEFAULT_MARKER = "# Answer"

_EMPH = r"[*_]*"
# An answer span is at most this many characters of its line, and only the last this-many statements or
# markers are read: bounds the work on degenerate responses (a sampled "the answer is" x 5000).
_MAX_SPAN = 1000
_MAX_STATEMENTS = 32
# "the answer is", "the final answer is", "final answer:", "answer:", "the correct option is", with
# markdown emphasis around the words or the colon ("**Answer:** B", "__Answer__: B", "*Answer*: B").
_ANSWER_IS = re.compile(
    r"(?:\bthe\s+)?(?:\bfinal\s+)?(?<![A-Za-z])answer" + _EMPH + r"\s*(?:is\b\s*:?|:|=)" + _EMPH + r"\s*"
    r"|\b(?:correct|right|best)\s+(?:option|choice)\s+is\b\s*:?\s*",
    re.IGNORECASE,
)
# Option letters named by a statement that follows them: "B is the correct answer", "option B is correct".
# A bare "B is correct" needs "option" / "choice" or parentheses: "statement A is correct" is reasoning.
_LETTER_IS = re.compile(
    r"(?:\b(?i:option|choice)\s+)?(?:\(([A-Za-z])\)|\b([A-Z])\b)\s*(?:is|would\s+be)\s+"
    r"(?:the\s+)?(?:(?:correct|right|best|final)\s+)?(?i:answer|option|choice)\b"
    r"|(?:\b(?i:option|choice)\s+\(?([A-Z])\)?|(?<![A-Za-z])\(([A-Z])\))\s*(?:is|would\s+be)\s+"
    r"(?:the\s+)?(?i:correct|right)\b",
)
# A number as people write it: -1,234.5 | .5 | 3/4 | 12% | 1e-3; a time h:mm is tried first.
_NUMBER = re.compile(
    r"(?<![\w.])(?:\d{1,2}:\d{2}(?!\d)"
    r"|(?=[-−]?\.?\d)[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:/\d+)?(?:[eE][-+]?\d+)?%?)"
)
# A response (or its last line) that is only an option letter, possibly followed by its option text.
_LONE_LETTER = re.compile(
    r"^(?:(?:the\s+)?(?:correct\s+)?(?:option|choice|answer)\s*(?:is\s*)?:?\s*)?"
    r"[\(\[]?([A-Z])[\)\]]?[.:]?(?:\s+\(.*\))?$",
    re.IGNORECASE,
)
# Signs that a response discusses options; the last-number fallback is then off.
# Case-sensitive letters, and "(A)" not after a letter: "f(x)" and "P(A)" are mathematics, not options.
_MENTIONS_OPTIONS = re.compile(
    r"(?<![A-Za-z])\(\s*[A-Z]\s*\)|\b(?i:option|choice)s?\s*\(?[A-Z]\b|(?m:^)[ \t]*[A-Z][.)]\s"
    r"|\b[A-Z]\s+is\s+(?:the\s+)?(?i:correct|right)\b",
)
# An explanation after the answer: "Yes, because ...", "B since ...", "12, which is ...".
_EXPLANATION = re.compile(
    r"\s*[,;]\s*(?:because|since|as|so|which|given|due\s+to|this\s+is|that\s+is|it\s+is)\b.*$"
    r"|\s+(?:because|since)\b.*$",
    re.IGNORECASE | re.S,
)
# A leading option letter followed by its text or an explanation: "B (5)", "C. 60", "D) since", "B - x".
_LETTER_LEAD = re.compile(
    r"^(?:(?i:option|choice)\s+)?(?:\(([A-Za-z])\)|([A-Z]))(?=$|[.):,]|\s+\(|\s+[-–—:]|\s+(?:because|since|as)\b)"
    r"(.*)$",
    re.S,
)
# After a leading letter: another option letter joined by "or" / "and" / "," / "/": ambiguous.
_SECOND_LETTER = re.compile(r"^[.)]?\s*(?:,|/|&|\bor\b|\band\b)\s*\(?[A-Z]\)?(?![A-Za-z])")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")


def _marker_regex(marker: str) -> re.Pattern[str]:
    """A forgiving regex for ``marker``: any run of ``#`` and whitespace, case-insensitive, optional colon,
    markdown emphasis around the words."""
    body = marker.lstrip("#").strip()
    hashes = r"#+[ \t]*" if marker.startswith("#") else ""
    words = r"[ \t]+".join(re.escape(w) for w in body.split())
    lead = _EMPH if hashes else ""  # a leading [*_]* with nothing before it would scan star runs quadratically
    return re.compile(hashes + lead + words + r"\b" + _EMPH + r"[ \t]*:?" + _EMPH, re.IGNORECASE)


_DEFAULT_MARKER_RE = _marker_regex(DEFAULT_MARKER)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced; None if
    there is none or its braces never close. Linear in ``len(text)``."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    # One pass pairs every "{" with its "}" (a stack), so many unclosed boxes cost no rescans.
    close_of: dict[int, int] = {}
    stack: list[int] = []
    for m in re.finditer(r"[{}]", text[starts[0] - 1:]):
        i = m.start() + starts[0] - 1
        if m.group(0) == "{":
            stack.append(i)
        elif stack:
            close_of[stack.pop()] = i
    for start in reversed(starts):
        end = close_of.get(start - 1)
        if end is not None:
            return text[start:end].strip()
    return None


def _cut_sentence(s: str) -> str:
    """First line of ``s``, cut at the first sentence end (a period that is not a decimal point)."""
    s = s.strip()
    s = s.split("\n", 1)[0]
    m = re.search(r"[.。](?=\s|$)", s)
    if m:
        s = s[: m.start()]
    return s.strip()


def _unwrap(s: str) -> str:
    """Remove wrappers repeatedly: ``$..$``, ``\\(..\\)``, ``\\boxed{}``, ``\\text{}``, emphasis, quotes,
    unbalanced leftovers of them (``12**``, ``$B``) and a trailing full stop."""
    for _ in range(6):  # wrappers can nest: **$\boxed{\text{(C)}}$**
        before = s
        s = s.strip()
        boxed = last_boxed(s)
        if boxed is not None and re.fullmatch(r"\\(?:boxed|fbox)\s*\{.*\}", s, flags=re.S):
            s = boxed
        m = _TEXT_CMD.fullmatch(s)
        if m:
            s = m.group(1)
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"),
                            ("__", "__"), ("*", "*"), ("_", "_"), ("`", "`"), ('"', '"'), ("'", "'")):
            if len(s) > len(left) + len(right) - 1 and s.startswith(left) and s.endswith(right):
                s = s[len(left): len(s) - len(right)].strip()
        # Unbalanced emphasis or math delimiters left by the marker split: "12**", "** B", "$B".
        lead, trail = s[: len(s) - len(s.lstrip("*_`"))], s[len(s.rstrip("*_`")):]
        if lead != trail and len(s) > len(lead) + len(trail):
            s = s[len(lead): len(s) - len(trail)].strip()
        if s.count("$") == 1:
            s = s.replace("$", "")
        s = s.rstrip(".。").strip()  # a trailing full stop ("12." is 12 anyway)
        if s == before:
            break
    return s


def option_letter(s: str | None) -> str | None:
    """The option letter a cleaned answer *is* (``B``, ``(b)``, ``Option B``), upper-cased, else None."""
    if s is None:
        return None
    m = re.fullmatch(r"(?:(?:option|choice)\s+)?(?:\(([A-Za-z])\)|([A-Z]))", s.strip(), flags=re.I)
    if not m:
        return None
    letter = m.group(1) or m.group(2)
    if m.group(2) and letter.islower() and not s.lower().startswith(("option", "choice")):
        return None  # a bare lower-case "a" is an article, not an option
    return letter.upper()


def clean_answer(ans: str) -> str | None:
    """Tidy an answer span: unwrap ``\\boxed{}``, ``$...$``, ``\\(...\\)``, ``\\text{}``, markdown emphasis,
    quotes, an ``Answer:`` prefix, a trailing period and an explanation; reduce an option letter followed
    by an explanation to the letter (a letter followed by option text, ``C. 60``, stays whole so that
    matching can check the text). Returns None when nothing is left, or when the span names
    two option letters (``B or C``)."""
    s = ans.strip()
    boxed = last_boxed(s)
    if boxed is not None:
        s = boxed
    found = list(_ANSWER_IS.finditer(s))
    m = found[-1] if found else None
    if m is not None and s[m.end():].strip():
        s = _cut_sentence(s[m.end():])
    s = _unwrap(s)
    s = _EXPLANATION.sub("", s).strip()
    s = _unwrap(s)
    lead = _LETTER_LEAD.match(s)
    if lead:
        letter = (lead.group(1) or lead.group(2)).upper()
        rest = lead.group(3)
        if _SECOND_LETTER.match(rest):
            return None  # "B or C", "A, C": two options asserted
        if re.fullmatch(r"[.):,]*", rest) or re.match(r"\s*[-–—]\s+[a-z]|\s*,\s*[a-z]", rest):
            s = letter  # "C.", "(C)", "C - the largest", "C, as ...": the letter ("A - B" stays whole)
        # else "B (5)", "C. 60": kept whole, so that matching can check the text against option B
    elif re.fullmatch(r"\(?[A-Z]\)?\s*(?:,|/|&|or|and)\s*\(?[A-Z]\)?(?:\s*(?:,|/|&|or|and)\s*\(?[A-Z]\)?)*",
                      s):
        return None
    return s or None


def _after_marker(text: str, marker_re: re.Pattern[str]) -> list[str] | None:
    """For every marker, the first non-empty line after it ("" when the marker ends the text); None when
    there is no marker."""
    found = list(marker_re.finditer(text))
    if not found:
        return None
    out = []
    for m in found[-_MAX_STATEMENTS:]:
        rest = text[m.end(): m.end() + _MAX_SPAN + 1000].lstrip()
        out.append(rest.split("\n", 1)[0].strip()[:_MAX_SPAN] if rest else "")
    return out


def lead_letter(s: str | None) -> str | None:
    """The option letter a cleaned answer names: a bare letter (``B``, ``(b)``, ``Option B``) or a letter
    followed by its text or an explanation (``B (5)``, ``C. 60``), upper-cased; else None."""
    if s is None:
        return None
    got = option_letter(s)
    if got is not None:
        return got
    m = _LETTER_LEAD.match(s.strip())
    return (m.group(1) or m.group(2)).upper() if m else None


def _conflicting_letters(answers: Sequence[str | None]) -> bool:
    letters = {lead_letter(a) for a in answers} - {None}
    return len(letters) > 1


def _digit_groups(text: str) -> str:
    """``9{,}500`` -> ``9,500``; ``9\\,500`` / ``9\\!500`` / thin-space groups -> ``9500``."""
    text = text.replace("{,}", ",")
    return re.sub(r"(?<=\d)(?:\\[,!: ]|[\u2009\u202f\u00a0])(?=\d{3}(?!\d))", "", text)


def extract_answer(text: str | None, marker: str | None = DEFAULT_MARKER, fallback: bool = True,
                   choices: Sequence[str] | None = None) -> str | None:
    """The final answer of a response, or None when it has none or it is ambiguous.

    Args:
        text: the response text.
        marker: the answer marker (default ``"# Answer"``; matched case-insensitively, any number of
            ``#``). ``None`` skips the marker rule.
        fallback: whether to try the fallbacks (statements, boxed, lone letter, last number) when there
            is no marker.
        choices: the prompt's options, when it has them. Only used to turn the last-number fallback off:
            a multiple-choice response must name its answer.

    Returns:
        The answer string (wrappers such as ``$...$`` and ``\\boxed{}`` removed; an option letter as the
        bare upper-case letter), or None.

    Raises:
        ValueError: when ``text`` is not a string.
    """
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"extract_answer: text must be a str, got {type(text).__name__}")
    if marker is not None:
        marker_re = _DEFAULT_MARKER_RE if marker == DEFAULT_MARKER else _marker_regex(marker)
        after = _after_marker(text, marker_re)
        if after is not None:
            if not after[-1]:
                return None
            got = [clean_answer(a) if a else None for a in after]
            if _conflicting_letters(got):
                return None  # "# Answer B ... # Answer C": two options asserted
            return got[-1]
    if not fallback:
        return None

    # 2. statements, 3. boxed: the last statement wins, unless they assert different option letters.
    said: list[tuple[int, str | None]] = []
    for m in list(_ANSWER_IS.finditer(text))[-_MAX_STATEMENTS:]:
        span = _cut_sentence(text[m.end(): m.end() + _MAX_SPAN])
        if span:
            said.append((m.start(), clean_answer(span)))
    for m in list(_LETTER_IS.finditer(text))[-_MAX_STATEMENTS:]:
        said.append((m.start(), next(g for g in m.groups() if g).upper()))
    said.sort(key=lambda t: t[0])
    boxed = last_boxed(text)
    boxed_ans = clean_answer(boxed) if boxed else None
    named = [a for _, a in said] + [boxed_ans]
    if _conflicting_letters(named):
        return None
    for _, a in reversed(said):
        if a:
            return a
    if said:  # every statement was ambiguous ("the answer is B or C"): no answer
        return None
    if boxed is not None:
        return boxed_ans
    # 4. a lone option letter: the whole response or its last line.
    stripped = text.strip().strip("*").strip()
    lines = [ln.strip().strip("*").strip() for ln in stripped.split("\n") if ln.strip()]
    for cand in (stripped, lines[-1] if lines else ""):
        m = _LONE_LETTER.match(cand)
        if m:
            letter = m.group(1)
            # A bare lower-case "a" is an article, not an option; "(b)" or "Option b" is an option.
            if letter.isupper() or cand.startswith(("(", "[")) or cand.lower().startswith(("option", "choice")):
                return letter.upper()
    # 5. last number, never for a response about options (see the module docstring).
    if choices or _MENTIONS_OPTIONS.search(text):
        return None
    nums = [m.group(0) for m in _NUMBER.finditer(_digit_groups(text)) if re.search(r"\d", m.group(0))]
    if nums:
        return nums[-1].replace("−", "-")
    return None
