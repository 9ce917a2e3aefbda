"""Does an extracted answer equal the gold answer?

The binary outcome reward of M-STaR is ``answers_match(extract_answer(response), gold)``, so this module
errs on the side of *recognising the same value written differently* and never on the side of partial
credit. Rules, in order:

1. **Multiple choice** (``choices`` given): both sides are mapped to an option index. A side maps when it
   is a letter (``B``, ``(b)``, ``Option B``, ``B. 12``, ``B (12)``) or equals one option's text (by the
   rules below, so ``12.0`` picks the option ``12``). A letter followed by the text of a *different* option
   (``B (14)`` when B is ``12`` and C is ``14``) maps to none. Same index: match. A gold that maps to no
   option falls through.
2. **Times** ``h:mm`` compare as (hours, minutes).
3. **Numbers**: thousands separators (also LaTeX's ``9{,}500``, ``9\\,500``, ``9\\!500`` and thin
   spaces), currency signs, units (``3 cm``, ``45°``, ``\\text{ m}``), an ``x =`` prefix and a hedge
   (``approximately``, ``about``, ``around``, ``roughly``, ``≈``, ``~``) are stripped; fractions (``3/4``,
   ``\\frac{3}{4}``) are exact; a percentage matches both its number and its fraction (``50%`` = ``50`` =
   ``0.5``, but ``50`` != ``0.5``). With ``precision`` (MathVista: decimal places of a float answer) both
   sides are rounded with Python's ``round``, as MathVista's scorer does (``round(1.25, 1) == 1.2``);
   without it values must agree to a relative 1e-6, or the prediction may be the gold value rounded to the
   prediction's own decimals when it writes at least two (``0.33`` for ``1/3``, ``3.14`` for ``3.14159``).
   When both sides are numbers, the numeric verdict is final (so ``2`` never matches ``12``).
4. **Text / LaTeX**: case-, space- and LaTeX-spacing-insensitive string equality after normalisation
   (``\\dfrac``/``\\tfrac`` -> ``\\frac``, ``\\left``/``\\right``, ``\\text{}``, ``^\\circ`` ...).
5. **Symbolic** (``\\sqrt{8}`` vs ``2\\sqrt{2}``, ``(x+1)^2`` vs ``x^2+2x+1``): ``math_verify`` (a core
   dependency; sympy-based). It is only asked when both sides look mathematical (a backslash, ``^``,
   ``sqrt``, ``pi``, or an operator between terms), never for plain words or letters: it would read
   ``east`` and ``seat`` as the same product of four symbols.

**contract** ``answers_match(pred, gold, choices=None, precision=None) -> bool``.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from decimal import Decimal, ROUND_HALF_UP, localcontext
from fractions import Fraction
from typing import Any
from collections.abc import Sequence

__all__ = ["answers_match", "normalize_text", "parse_number", "option_index", "math_verify_available",
           "check_answer"]

log = logging.getLogger(__name__)

_REL_TOL = 1e-6
_ABS_TOL = 1e-9
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: A predicted answer longer than this never matches (``extract_answer`` spans are at most 1000 characters);
#: bounds the cost of degenerate samples.
MAX_ANSWER_CHARS = 1000
# Longer sides are not handed to math_verify (sympy can take seconds on a long junk expression).
_MAX_SYMBOLIC_CHARS = 300


# ---------------------------------------------------------------------------------------------- cleaning
def _strip_wrappers(s: str) -> str:
    """Remove outer ``$``, ``\\(\\)``, ``\\[\\]``, ``\\boxed{}``, markdown bold, quotes, trailing period."""
    s = s.strip()
    for _ in range(4):
        before = s
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"),
                            ('"', '"'), ("'", "'"), ("`", "`")):
            if len(s) >= len(left) + len(right) + 1 and s.startswith(left) and s.endswith(right):
                s = s[len(left): len(s) - len(right)].strip()
        m = re.fullmatch(r"\\(?:boxed|fbox)\s*\{(.*)\}", s, flags=re.S)
        if m:
            s = m.group(1).strip()
        s = s.rstrip(".。").strip()
        if s == before:
            break
    return s


def _latex_norm(s: str) -> str:
    """LaTeX normalisation shared by the number and text rules."""
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    # Digit-group separators: 9{,}500 -> 9,500 (then the thousands rule); 9\,500, 9\!500, thin spaces -> 9500.
    s = s.replace("{,}", ",")
    s = re.sub(r"(?<=\d)(?:\\[,!: ]|[\u2009\u202f\u00a0])(?=\d{3}(?!\d))", "", s)
    s = re.sub(r"\\left\b|\\right\b", "", s)
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\[,;:! ]|\\quad|\\qquad", " ", s)
    s = s.replace("\\%", "%").replace("\\$", "$").replace("−", "-").replace("\\cdot", "*").replace("\\times", "*")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree", "°", s)
    s = s.replace("\\pi", "π")
    s = re.sub(r"\\sqrt\s*([0-9a-zA-Z])", r"\\sqrt{\1}", s)  # \sqrt3 -> \sqrt{3}
    s = re.sub(r"\\frac\s*([0-9])\s*([0-9])", r"\\frac{\1}{\2}", s)  # \frac12 -> \frac{1}{2}
    return s


def normalize_text(s: str) -> str:
    """Case-, whitespace- and LaTeX-insensitive form of an answer for string equality."""
    s = _latex_norm(_strip_wrappers(s))
    s = s.strip().lower()
    s = re.sub(r"^(?:the|a|an)\s+", "", s)
    s = re.sub(r"\s+", " ", s)
    if re.search(r"[\\^_{}=+*/()\[\],<>]", s):  # mathematical: spaces carry no meaning
        s = s.replace(" ", "")
    return s.rstrip(".").strip()


# ---------------------------------------------------------------------------------------------- numbers
_NUM = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?"
_FRAC_LATEX = re.compile(r"^([-+]?)\\frac\s*\{\s*([-+]?\d+(?:\.\d+)?)\s*\}\s*\{\s*([-+]?\d+(?:\.\d+)?)\s*\}$")
_FRAC_SHORT = re.compile(r"^([-+]?)\\frac\s*(\d)(\d)$")  # \frac12
_FRAC_SLASH = re.compile(r"^([-+]?\d+(?:\.\d+)?)\s*/\s*([-+]?\d+(?:\.\d+)?)$")
_HEDGE = re.compile(r"^(?:(?:approximately|approx\.?|about|around|roughly|circa|~|≈|\\approx|\\sim)\s*)+",
                    re.IGNORECASE)
_PLAIN = re.compile(r"^" + _NUM + r"$")
# A trailing unit: words, degree and power signs, per-slash (km/h), m^2 / cm².
_UNIT = re.compile(r"^(.*?[\d}])\s*(?:°|%|percent|[a-zA-Zµ]+(?:\^?[23²³])?(?:\s*/\s*[a-zA-Z]+)?(?:\s+[a-zA-Z]+)*)?$")


class _Num:
    """A parsed number: exact value (Fraction) plus the decimals it was written with (for rounding)."""

    __slots__ = ("value", "decimals", "percent")

    def __init__(self, value: Fraction, decimals: int, percent: bool) -> None:
        self.value, self.decimals, self.percent = value, decimals, percent

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"_Num({self.value}, decimals={self.decimals}, percent={self.percent})"


def _decimals(tok: str) -> int:
    m = re.search(r"\.(\d+)", tok)
    return len(m.group(1)) if m and "e" not in tok.lower() else 0


def _core_number(s: str) -> _Num | None:
    """Parse a bare number (no unit): int, decimal, scientific, a/b, \\frac{a}{b}."""
    s = s.strip()
    if not s or not re.search(r"\d", s):
        return None
    for rx in (_FRAC_LATEX, _FRAC_SHORT):
        m = rx.match(s)
        if m:
            num, den = Fraction(m.group(2)), Fraction(m.group(3))
            if den == 0:
                return None
            v = num / den
            return _Num(-v if m.group(1) == "-" else v, 99, False)
    m = _FRAC_SLASH.match(s)
    if m:
        num, den = Fraction(m.group(1)), Fraction(m.group(2))
        if den == 0:
            return None
        return _Num(num / den, 99, False)
    if _PLAIN.match(s):
        try:
            return _Num(Fraction(s.replace(",", "")), _decimals(s), False)
        except (ValueError, ZeroDivisionError):
            return None
    return None


def parse_number(s: str | None) -> _Num | None:
    """Parse an answer as a number, or None. Strips wrappers, currency, thousands separators, a single
    ``x =`` prefix and a trailing unit; ``%`` / ``percent`` sets the percent flag."""
    if s is None:
        return None
    t = _latex_norm(_strip_wrappers(str(s))).strip()
    t = re.sub(r"^[a-zA-Z]\s*(?:=|≈|\\approx)\s*(?=\S)", "", t)  # "x = 5", "x \approx 5"
    t = _HEDGE.sub("", t)  # "approximately 3.14", "about 5 cm", "≈ 3.14"
    t = re.sub(r"^(?:[$€£¥]|usd\s*)", "", t, flags=re.I).strip()
    if not t or not re.search(r"\d", t):
        return None
    percent = bool(re.search(r"(?:%|\bpercent)\s*\.?$", t))
    m = _UNIT.match(t)
    if m and not _core_number(t):
        t = m.group(1)
    t = t.strip()
    # "$5": a currency sign may also sit after the sign of the number, "-$5".
    t = re.sub(r"^([-+]?)[$€£¥]", r"\1", t)
    num = _core_number(t)
    if num is None:
        return None
    num.percent = percent
    return num


def _round_half_up(v: Fraction, places: int) -> Decimal:
    q = Decimal(1).scaleb(-places)
    # The default context (28 digits) cannot quantize a long number (a sampled "0.1111...1" of 40 digits
    # raises InvalidOperation); give this one the digits it needs.
    with localcontext() as ctx:
        ctx.prec = len(str(abs(v.numerator))) + len(str(v.denominator)) + places + 10
        return (Decimal(v.numerator) / Decimal(v.denominator)).quantize(q, rounding=ROUND_HALF_UP)


def _candidates(n: _Num) -> list[tuple[Fraction, int]]:
    """The values a number may stand for: a percentage is both ``p`` and ``p/100``."""
    out = [(n.value, n.decimals)]
    if n.percent:
        out.append((n.value / 100, n.decimals + 2))
    return out


def _numbers_match(pred: _Num, gold: _Num, precision: int | None) -> bool:
    for pv, pd in _candidates(pred):
        for gv, _gd in _candidates(gold):
            if pv == gv:
                return True
            if precision is not None:
                # MathVista's scorer: round(float(x), precision) on both sides (Python's round, so
                # round(1.25, 1) == 1.2 as binary floats go).
                try:
                    if round(float(pv), precision) == round(float(gv), precision):
                        return True
                except OverflowError:  # a number past the float range equals no rounded gold value
                    pass
                continue
            if math.isclose(float(pv), float(gv), rel_tol=_REL_TOL, abs_tol=_ABS_TOL):
                return True
            # The prediction wrote the gold value rounded to its own (>= 2) decimals: 0.33 for 1/3.
            if 2 <= pd < 99 and _round_half_up(gv, pd) == _round_half_up(pv, pd):
                return True
    return False


_TIME = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?\s*(am|pm|a\.m\.|p\.m\.)?$", re.I)


def _parse_time(s: str) -> tuple[int, int, int, str] | None:
    m = _TIME.match(_strip_wrappers(s).strip())
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), (m.group(4) or "").lower().replace(".", "")


# ----------------------------------------------------------------------------------------- math_verify
@functools.lru_cache(maxsize=1)
def _math_verify() -> Any:
    # Imported on first use, not at import time: math_verify pulls in sympy (about a second).
    try:
        from math_verify import parse, verify
        from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig
    except ImportError as exc:
        raise ImportError("mstar_fast.rewards needs math-verify (a core dependency): pip install 'math-verify>=0.9'") \
            from exc
    return parse, verify, (LatexExtractionConfig(), ExprExtractionConfig())


def math_verify_available() -> bool:
    """True when ``math_verify`` imports. It is a core dependency, so False means a broken install (and
    :func:`answers_match` raises ``ImportError`` on the first mathematical comparison)."""
    try:
        _math_verify()
    except ImportError:
        return False
    return True


_MATHY = re.compile(r"\\[a-zA-Z]+|\^|sqrt|π|\bpi\b|\d\s*[a-z]\b|[a-z0-9)]\s*[-+*/]\s*[a-z0-9(\\]", re.I)


def _looks_mathematical(s: str) -> bool:
    return bool(_MATHY.search(s)) and not re.fullmatch(r"[A-Za-z ]+", s)


def _symbolic_match(pred: str, gold: str) -> bool:
    parse, verify, configs = _math_verify()
    main = threading.current_thread() is threading.main_thread()
    timeout = 3 if main else None  # math_verify's timeout uses signal.alarm: main thread only
    try:
        kw = {"parsing_timeout": timeout}
        g = parse(f"${gold}$", extraction_config=configs, **kw)
        p = parse(f"${pred}$", extraction_config=configs, **kw)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=timeout))
    except Exception as exc:  # never let a parser failure kill a reward pass
        log.debug("math_verify failed on %r vs %r: %s", pred, gold, exc)
        return False


# ----------------------------------------------------------------------------------------- options
def option_index(ans: str | None, choices: Sequence[str] | None) -> int | None:
    """Index of the option ``ans`` names, by letter (``B``, ``(b)``, ``Option B``, ``B. text``) or by
    option text (value-equal under the number/text rules); None when it names none, or several."""
    if ans is None or not choices:
        return None
    n = len(choices)
    s = _strip_wrappers(str(ans))
    m = re.fullmatch(r"(?:(?:the\s+)?(?:correct\s+)?(?:option|choice|answer)\s*(?:is\s*)?:?\s*)?"
                     r"[\(\[]?([A-Za-z])[\)\]]?[.:]?", s, flags=re.I)
    if m:
        letter = m.group(1)
        i = LETTERS.index(letter.upper())
        # A lone lower-case letter is an option only when no option text is that letter.
        if i < n and not (letter.islower() and len(s) == 1 and any(normalize_text(c) == letter for c in choices)):
            return i
    s_opt = re.sub(r"^(?:option|choice)\s+", "", s, flags=re.I)  # "Option B (12)"
    m = re.fullmatch(r"[\(\[]?([A-Z])[\)\]][.:]?\s*(.+)|([A-Z])[.:]\s+(.+)|([A-Z])\s+\((.+)\)", s_opt, flags=re.S)
    if m:
        letter = m.group(1) or m.group(3) or m.group(5)
        rest = (m.group(2) or m.group(4) or m.group(6)).strip()
        i = LETTERS.index(letter)
        if i >= n:
            return None
        # "B (5)" with B = "5": the letter. "B (7)" with B = "5" and D = "7": the text names another
        # option, so the answer is self-contradictory and names none. Other text is an explanation.
        if _values_match(rest, str(choices[i]), None):
            return i
        if any(_values_match(rest, str(c), None) for j, c in enumerate(choices) if j != i):
            return None
        return i
    hits = [i for i, c in enumerate(choices) if _values_match(s, str(c), None)]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:  # duplicated option texts: the exact string wins, else ambiguous
        exact = [i for i in hits if normalize_text(str(choices[i])) == normalize_text(s)]
        return exact[0] if len(exact) == 1 else None
    return None


# ----------------------------------------------------------------------------------------- matching
def _values_match(pred: str, gold: str, precision: int | None) -> bool:
    """Rules 2-5 (no options)."""
    tp, tg = _parse_time(pred), _parse_time(gold)
    if tp is not None or tg is not None:
        if tp is None or tg is None:
            return False
        if tp[3] and tg[3] and tp[3] != tg[3]:
            return False
        return tp[:3] == tg[:3]
    np_, ng = parse_number(pred), parse_number(gold)
    if np_ is not None and ng is not None:
        return _numbers_match(np_, ng, precision)
    a, b = normalize_text(pred), normalize_text(gold)
    if not a or not b:
        return False
    if a == b:
        return True
    mp, mg = _looks_mathematical(pred), _looks_mathematical(gold)
    if np_ is not None or ng is not None:
        # One side is a plain number: only a mathematical other side (\sqrt{4}) can equal it.
        other = mg if np_ is not None else mp
        if not other:
            return False
    elif not (mp and mg):
        return False
    if len(pred) > _MAX_SYMBOLIC_CHARS or len(gold) > _MAX_SYMBOLIC_CHARS:
        return False
    return _symbolic_match(_latex_norm(_strip_wrappers(pred)), _latex_norm(_strip_wrappers(gold)))


def _check_precision(precision: Any) -> int | None:
    if precision is None:
        return None
    try:
        p = float(precision)
    except (TypeError, ValueError):
        raise ValueError(f"answers_match: precision must be a number of decimal places, got {precision!r}") from None
    if math.isnan(p):
        return None
    if p < 0 or p != int(p):
        raise ValueError(f"answers_match: precision must be a non-negative whole number, got {precision!r}")
    return int(p)


def answers_match(pred: str | None, gold: str | None, choices: Sequence[str] | None = None,
                  precision: int | float | None = None) -> bool:
    """True when the extracted answer ``pred`` equals the gold answer (see the module docstring).

    Args:
        pred: the extracted answer (``extract_answer`` output); None never matches.
        gold: the gold answer: an option letter or option text when ``choices`` is given, else a value.
        choices: the option texts in order, so ``"B"`` means ``choices[1]``.
        precision: decimal places to round numeric answers to (MathVista's ``precision``).

    Raises:
        ValueError: when ``precision`` is negative or fractional.
    """
    if pred is None or gold is None:
        return False
    prec = _check_precision(precision)
    pred, gold = str(pred).strip(), str(gold).strip()
    if not pred or not gold or len(pred) > MAX_ANSWER_CHARS:
        return False
    if choices:
        choices = [str(c) for c in choices]
        gi = option_index(gold, choices)
        if gi is not None:
            pi = option_index(pred, choices)
            if pi is not None:
                return pi == gi
            return _values_match(pred, choices[gi], prec)
    # No options (or a gold outside them): a lone-letter gold compares with a lone letter, or with the
    # letter that leads "B (5)" / "C. 60" (the text cannot be checked without the options).
    lg = re.fullmatch(r"[\(\[]?([A-Za-z])[\)\]]?", _strip_wrappers(gold))
    lp = re.fullmatch(r"[\(\[]?([A-Za-z])[\)\]]?", _strip_wrappers(pred))
    if lg and not lp:
        lp = re.fullmatch(r"[\(\[]?([A-Z])(?:[\)\]][.:]?\s*.+|[.:]\s+.+|\s+\(.+\))", _strip_wrappers(pred), flags=re.S)
    if lp and lg:
        return lp.group(1).upper() == lg.group(1).upper()
    return _values_match(pred, gold, prec)


def check_answer(pred: str | None, prompt: Any) -> bool:
    """``answers_match`` against a :class:`~mstar_fast.data.Prompt`: its ``answer``, ``choices`` and
    ``meta["precision"]`` (set by the MathVista reader). False when the prompt has no gold answer."""
    meta = getattr(prompt, "meta", None) or {}
    return answers_match(pred, getattr(prompt, "answer", None), getattr(prompt, "choices", None),
                         meta.get("precision"))
