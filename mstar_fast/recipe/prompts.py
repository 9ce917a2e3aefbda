"""The prompts of a run: train / val / test / unlabeled, from files or a named source (``synthetic``)."""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from mstar_fast.config import DataConfig
from mstar_fast.constants import PROMPT_SOURCES, resolve
from mstar_fast.data.readers import load_prompts
from mstar_fast.data.records import Prompt
from mstar_fast.errors import UserError

__all__ = ["RunData", "load_data"]

log = logging.getLogger("mstar_fast")


@dataclass
class RunData:
    """The prompts of a run. ``train`` is in the order iterations chunk it (shuffled once by the seed)."""

    train: list[Prompt]
    val: list[Prompt]
    test: list[Prompt] = field(default_factory=list)
    unlabeled: list[Prompt] = field(default_factory=list)

    def lookup(self) -> list[Prompt]:
        """Every prompt a PRM may be asked to score a response of."""
        return self.train + self.val + self.unlabeled


def _read(source: str, limit: int, require_answer: bool, what: str) -> list[Prompt]:
    if not Path(source).exists():
        raise UserError(f"config: data.{what} = {source!r} does not exist")
    prompts, report = load_prompts(source, limit=limit or None, require_answer=require_answer,
                                   check_images="exists")
    if report.n_skipped:
        log.warning("mstar_fast: data.%s: %s", what, report.summary())
    if not prompts:
        raise UserError(f"config: data.{what} = {source!r} holds no usable prompts ({report.summary()})")
    return prompts


def _split(d: DataConfig, source: str | None, split: str, n: int, labeled: bool = True) -> list[Prompt]:
    if source is None:
        return []
    if source in PROMPT_SOURCES:
        return resolve(PROMPT_SOURCES[source])(split, n, d)
    return _read(source, n, labeled, split)


def load_data(d: DataConfig, shuffle: bool, seed: int) -> RunData:
    """Train / val / test / unlabeled prompts of the ``data`` section; ``shuffle`` shuffles the train prompts
    once with ``seed`` (``iterate.shuffle_prompts``)."""
    train = _split(d, d.train, "train", d.n_train)
    val = _split(d, d.val, "val", d.n_val)
    test = _split(d, d.test, "test", d.n_test)
    unlabeled: list[Prompt] = []
    if d.unlabeled in PROMPT_SOURCES:
        # Train-split problems beyond the labeled ones, with their answers hidden.
        extra = resolve(PROMPT_SOURCES[d.unlabeled])("train", max(1, d.n_train), d, start=d.n_train)
        unlabeled = [dataclasses.replace(p, id=p.id + "-u", answer=None) for p in extra]
    elif d.unlabeled is not None:
        unlabeled = _read(d.unlabeled, 0, False, "unlabeled")
    if shuffle:
        random.Random(f"mstar-order/{seed}").shuffle(train)
    return RunData(train, val, test, unlabeled)
