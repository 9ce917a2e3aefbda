"""The two records every stage passes around: a ``Prompt`` (one image-question pair) and a ``Sample``
(one response to it). Both round-trip through JSON lines (``to_dict`` / ``from_dict``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Prompt:
    """One (images, question) pair. ``images`` holds file paths or PIL images; ``answer`` is the gold
    answer when labeled; ``choices`` are option texts in order (so "B" means ``choices[1]``)."""

    id: str
    question: str
    images: list[Any] = field(default_factory=list)
    answer: str | None = None
    choices: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def question_with_choices(self) -> str:
        """The question with its options appended (a ``Choices:`` line, then ``(A) ...`` lines), unless
        it has none or they are already written in it (``meta["choices_in_question"]``, MathV360K style)."""
        if not self.choices or self.meta.get("choices_in_question"):
            return self.question
        opts = "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(self.choices))
        return f"{self.question}\nChoices:\n{opts}"

    def to_dict(self) -> dict[str, Any]:
        # Replace in-memory images first: asdict would deep-copy every PIL image.
        images = [im if isinstance(im, str) else f"<{type(im).__name__}>" for im in self.images]
        return dataclasses.asdict(dataclasses.replace(self, images=images))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Prompt:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Sample:
    """One response. ``index`` is 0..n-1 within its prompt; ``seed`` is the per-sample sampler seed;
    ``finish_reason`` is "stop" (EOS or a stop string), "length" or "error"; ``step_scores`` / ``score``
    come from the PRM (score = min over steps); ``selected`` marks the responses kept for training.
    ``token_logprobs`` (when the engine records them) holds, per entry of ``token_ids``, the sampler's
    log-probability of that token under the temperature-scaled, unfiltered distribution (fp32 values)."""

    prompt_id: str
    index: int
    text: str
    temperature: float = 1.0
    seed: int | None = None
    finish_reason: str = "stop"
    extracted: str | None = None
    correct: bool | None = None
    step_scores: list[float] | None = None
    score: float | None = None
    selected: bool = False
    token_ids: list[int] | None = None
    token_logprobs: list[float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sample:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
