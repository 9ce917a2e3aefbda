"""Stop strings, checked on decoded text (a stop string can span several tokens, or end mid-token).

Each step decodes only the last few tokens of each live row (enough bytes to hold the longest stop
string), so the check costs O(rows) per step, not O(rows * length). The returned text ends *before*
the first occurrence of a stop string (the OpenAI / vLLM convention); the matched string goes to
``Sample.meta["stop"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def normalize_stop(stop: str | Sequence[str] | None) -> list[str]:
    """``None`` -> ``[]``, ``"x"`` -> ``["x"]``; rejects empty strings and non-strings."""
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else list(stop)
    for s in items:
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop: every stop string must be a non-empty str, got {s!r}")
    return items


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, str | None]:
    """``(text before the earliest stop string, that string)``, or ``(text, None)`` when none occurs."""
    best, hit = len(text), None
    for s in stop:
        i = text.find(s)
        if 0 <= i < best or (i == best and hit is not None and len(s) > len(hit)):
            best, hit = i, s
    return (text[:best], hit) if hit is not None else (text, None)


class StopChecker:
    """Finds rows whose generated text now contains a stop string."""

    def __init__(self, stop: Sequence[str], tokenizer: Any):
        self.stop = list(stop)
        self.tokenizer = tokenizer
        # A byte-level token holds >= 1 byte and a char <= 4 bytes; +2 tokens cover a partial char on each side.
        self.window = 4 * max((len(s) for s in self.stop), default=0) + 2

    def __bool__(self) -> bool:
        return bool(self.stop)

    def hits(self, token_lists: Sequence[Sequence[int]]) -> list[bool]:
        """For each row (its generated token ids so far), whether its text contains a stop string."""
        if not self.stop or not token_lists:
            return [False] * len(token_lists)
        tails = self.tokenizer.batch_decode([list(t[-self.window:]) for t in token_lists], skip_special_tokens=True)
        return [any(s in tail for s in self.stop) for tail in tails]
