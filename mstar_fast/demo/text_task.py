"""``synthetic_text``: the synthetic task's ``grid_geometry`` problems as text-only prompts.

The same problems, answers and gold reasoning as the ``synthetic`` source (:mod:`mstar_fast.demo.synthetic`),
with the image replaced by a sentence giving each rectangle's corners on the grid, so a text-only policy
(``model.tiny.arch: llama``) can run the whole recipe, e.g. with ``rollout.backend=vllm``, which runs text
models on CPU. The width and height are not written out: the policy reads them off the corners (one subtraction
each), then follows the image task's reasoning. Only ``grid_geometry`` is described in words; the other
families need their picture.
"""

from __future__ import annotations

import dataclasses

from mstar_fast.config import DataConfig
from mstar_fast.data.records import Prompt
from mstar_fast.demo.synthetic import prompt_source
from mstar_fast.errors import UserError

__all__ = ["describe_grid", "text_prompt_source"]

TEXT_FAMILIES = ("grid_geometry",)


def describe_grid(scene: dict) -> str:
    """One sentence per rectangle of a ``grid_geometry`` scene: colour and corners (column, row) on the grid."""
    rects = []
    for r in scene["rects"]:
        x0, y0, x1, y1 = r["x"], r["y"], r["x"] + r["w"], r["y"] + r["h"]
        article = "an" if r["color"][0] in "aeiou" else "a"
        rects.append(f"{article} {r['color']} rectangle has corners ({x0}, {y0}) and ({x1}, {y1})")
    return f"On a grid of {scene['grid']} x {scene['grid']} unit squares, " + "; ".join(rects) + "."


def text_prompt_source(split: str, n: int, data: DataConfig, start: int = 0) -> list[Prompt]:
    """The ``synthetic_text`` prompt source of a run config (``data.train: synthetic_text``): the ``synthetic``
    source's prompts without images, the scene described in the question.

    Raises:
        UserError: ``data.synthetic_families`` names a family other than ``grid_geometry``, or ``n`` < 1.
    """
    other = [f for f in data.synthetic_families if f not in TEXT_FAMILIES]
    if other:
        raise UserError(f"config: data source synthetic_text describes only {list(TEXT_FAMILIES)} in words; "
                        f"data.synthetic_families has {other}")
    out = []
    for p in prompt_source(split, n, data, start=start):
        question = f"{describe_grid(p.meta['scene'])} {p.question}"
        out.append(dataclasses.replace(p, question=question, images=[], meta={**p.meta, "text_only": True}))
    return out
