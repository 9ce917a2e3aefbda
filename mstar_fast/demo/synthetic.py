"""A procedurally generated multimodal reasoning task, small enough for a ~5M-parameter VLM on a CPU.

Every prompt is a small Pillow drawing (64x64 by default) plus a question whose answer needs **both**
reading the image and 2-4 reasoning steps. Four families, each tagged with the MathVista sub-task it
imitates (``meta["category"]``), and three difficulty levels (``meta["difficulty"]``):

====================  ========  ===========================================================================
family                category  questions (level 1 / 2 / 3)
====================  ========  ===========================================================================
``shape_count``       MWP       subtract a colour, how many left / sum or difference of two colour counts /
                                which colour has the most shapes (multiple choice) or remove colour+kind
``bar_chart``         FQA       sum of two bars / tallest minus shortest / ``a + b - c`` over three bars
``clock``             VQA       time in k hours (minute hand at 12) / time in k minutes / time k h m min ago
``grid_geometry``     GPS       area of a rectangle on a grid / its perimeter / total area of two rectangles
====================  ========  ===========================================================================

No text is drawn (colours, lengths and hand angles carry the information), so no font is needed.
Each prompt carries its gold chain of thought in the docs/recipe.md format (``meta["cot"]``: steps separated by
a blank line, then ``# Answer\\n\\n<answer>``), the ``scene`` it was drawn from and the question ``spec``,
so :func:`solve` recomputes the answer from the scene alone.

Splits are disjoint by construction: each underlying problem (family, question spec and scene, without the
drawing jitter) hashes to one split bucket (default test 10%, validation 10%, train 80%), and a split only
keeps problems of its bucket. Item ``i`` of a split depends only on ``(seed, split, i)``, so a larger split
extends a smaller one. Questions are built so that text alone gives no more than the answer prior
(``tests/data/test_synthetic.py`` checks that a text-only predictor stays near chance).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from collections.abc import Callable, Sequence

from mstar_fast.config import DataConfig
from mstar_fast.data.records import Prompt
from mstar_fast.errors import UserError

if TYPE_CHECKING:  # Pillow is imported lazily: importing this module must not need it
    from PIL.Image import Image

__all__ = [
    "SyntheticConfig",
    "prompt_source",
    "FAMILIES",
    "CATEGORIES",
    "make_synthetic_split",
    "make_synthetic_dataset",
    "export_synthetic",
    "render",
    "solve",
    "format_cot",
]

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val"}

_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "blue": (40, 90, 220),
    "green": (30, 160, 60),
    "orange": (245, 140, 20),
    "purple": (140, 60, 185),
}
_SHAPE_COLORS = ("red", "blue", "green", "orange")
_SHAPES = ("circle", "square", "triangle")


@dataclass
class SyntheticConfig:
    """What to generate.

    Attributes:
        families: task families to draw from (round-robin over items, so they are balanced).
        levels: difficulty levels to draw from (uniformly): 1 = 2 steps, 2 = 3 steps, 3 = 3-4 steps.
        image_size: side of the square image in pixels (64 or 96 suit a tiny VLM).
        seed: base seed; each split derives its own stream from it.
        split_fractions: shares of the problem space for (train, val, test).
    """

    families: tuple[str, ...] = ("shape_count", "bar_chart", "clock", "grid_geometry")
    levels: tuple[int, ...] = (1, 2, 3)
    image_size: int = 64
    seed: int = 0
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def validate(self) -> None:
        """Raise ValueError naming the bad field."""
        unknown = [f for f in self.families if f not in FAMILIES]
        if not self.families or unknown:
            raise ValueError(f"SyntheticConfig.families: unknown {unknown or 'empty'}; choose from {sorted(FAMILIES)}")
        if not self.levels or any(lv not in (1, 2, 3) for lv in self.levels):
            raise ValueError(f"SyntheticConfig.levels must be a non-empty subset of (1, 2, 3), got {self.levels}")
        if not 32 <= self.image_size <= 1024:
            raise ValueError(f"SyntheticConfig.image_size must be in [32, 1024], got {self.image_size}")
        fr = self.split_fractions
        if len(fr) != 3 or any(f <= 0 for f in fr) or abs(sum(fr) - 1) > 1e-6:
            raise ValueError(f"SyntheticConfig.split_fractions must be 3 positive shares summing to 1, got {fr}")


# ----------------------------------------------------------------------------------------------- helpers
def format_cot(steps: Sequence[str], answer: str) -> str:
    """The docs/recipe.md output format: steps separated by a blank line, then ``# Answer\\n\\n<answer>``."""
    return "\n\n".join(steps) + "\n\n# Answer\n\n" + answer


def _jitter_color(rng: random.Random, rgb: tuple[int, int, int], amount: int = 12) -> list[int]:
    return [max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb]


def _background(rng: random.Random) -> list[int]:
    g = rng.randint(235, 255)
    return [g, max(225, g - rng.randint(0, 8)), max(225, g - rng.randint(0, 8))]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _letter(i: int) -> str:
    return chr(ord("A") + i)


# ----------------------------------------------------------------------------------------- shape_count
def _shape_sample(rng: random.Random, level: int) -> tuple[dict, dict]:
    n = rng.randint(3, 8)
    cells = rng.sample(range(16), n)
    colors = list(_SHAPE_COLORS)
    if level == 3 and rng.random() < 0.5:
        # Multiple choice: three colours with distinct counts (the largest is the answer).
        three = rng.sample(colors, 3)
        counts = sorted(rng.sample(range(1, 5), 3), reverse=True)
        rng.shuffle(counts)
        objs = []
        pool = [c for c, k in zip(three, counts) for _ in range(k)]
        n = len(pool)
        cells = rng.sample(range(16), n)
        for cell, col in zip(cells, pool):
            objs.append({"kind": rng.choice(_SHAPES), "color": col, "cell": cell})
        order = three[:]
        rng.shuffle(order)
        spec = {"template": "most_color", "choices": order}
    else:
        objs = [{"kind": rng.choice(_SHAPES), "color": rng.choice(colors), "cell": c} for c in cells]
        present = sorted({o["color"] for o in objs})
        if level == 1:
            spec = {"template": "subtract_color", "color": rng.choice(present)}
        elif level == 2:
            if len(present) < 2:
                objs[0]["color"] = next(c for c in colors if c != objs[1]["color"])
                present = sorted({o["color"] for o in objs})
            c1, c2 = rng.sample(present, 2)
            spec = {"template": rng.choice(["sum_colors", "diff_colors"]), "colors": [c1, c2]}
        else:
            o = rng.choice(objs)
            kind2 = rng.choice([k for k in _SHAPES if k != o["kind"]])
            spec = {"template": "subtract_color_kind_and_kind", "color": o["color"], "kind": o["kind"],
                    "kind2": kind2}
    scene = {"objects": objs,
             "jitter": [[rng.randint(-2, 2), rng.randint(-2, 2), rng.randint(0, 2)] for _ in objs],
             "tints": [_jitter_color(rng, _COLORS[o["color"]]) for o in objs],
             "background": _background(rng)}
    return scene, spec


def _shape_question(spec: dict) -> tuple[str, list[str] | None]:
    t = spec["template"]
    if t == "subtract_color":
        return f"Subtract all {spec['color']} shapes. How many shapes are left?", None
    if t == "sum_colors":
        c1, c2 = spec["colors"]
        return f"How many {c1} shapes and {c2} shapes are there in total?", None
    if t == "diff_colors":
        c1, c2 = spec["colors"]
        return f"What is the difference between the number of {c1} shapes and the number of {c2} shapes?", None
    if t == "subtract_color_kind_and_kind":
        return (f"Subtract all {spec['color']} {spec['kind']}s and all {spec['kind2']}s. "
                f"How many shapes are left?"), None
    if t == "most_color":
        return "Which colour has the most shapes?", list(spec["choices"])
    raise ValueError(f"shape_count: unknown template {t!r}")


def _shape_solve(scene: dict, spec: dict) -> tuple[str, list[str]]:
    objs = scene["objects"]
    count = lambda pred: sum(1 for o in objs if pred(o))  # noqa: E731
    t = spec["template"]
    if t == "subtract_color":
        n, k = len(objs), count(lambda o: o["color"] == spec["color"])
        return str(n - k), [f"There are {_plural(n, 'shape')} in total.",
                            f"{k} of them {'is' if k == 1 else 'are'} {spec['color']}, so {n} - {k} = {n - k}."]
    if t in ("sum_colors", "diff_colors"):
        c1, c2 = spec["colors"]
        a, b = count(lambda o: o["color"] == c1), count(lambda o: o["color"] == c2)
        res = a + b if t == "sum_colors" else abs(a - b)
        op = f"{a} + {b} = {res}" if t == "sum_colors" else f"{max(a, b)} - {min(a, b)} = {res}"
        return str(res), [f"There {'is' if a == 1 else 'are'} {_plural(a, c1 + ' shape')}.",
                          f"There {'is' if b == 1 else 'are'} {_plural(b, c2 + ' shape')}.", f"{op}."]
    if t == "subtract_color_kind_and_kind":
        n = len(objs)
        k1 = count(lambda o: o["color"] == spec["color"] and o["kind"] == spec["kind"])
        k2 = count(lambda o: o["kind"] == spec["kind2"])
        left = n - k1 - k2
        return str(left), [f"There are {_plural(n, 'shape')} in total.",
                           f"There {'is' if k1 == 1 else 'are'} {_plural(k1, spec['color'] + ' ' + spec['kind'])}.",
                           f"There {'is' if k2 == 1 else 'are'} {_plural(k2, spec['kind2'])}.",
                           f"{n} - {k1} - {k2} = {left}."]
    if t == "most_color":
        counts = {c: count(lambda o, c=c: o["color"] == c) for c in spec["choices"]}
        best = max(spec["choices"], key=lambda c: counts[c])
        steps = [f"There {'is' if counts[c] == 1 else 'are'} {_plural(counts[c], c + ' shape')}."
                 for c in spec["choices"]]
        li = _letter(spec["choices"].index(best))
        steps.append(f"The most shapes are {best}, which is option ({li}).")
        return li, steps
    raise ValueError(f"shape_count: unknown template {t!r}")


def _shape_draw(scene: dict, size: int) -> Image:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), tuple(scene["background"]))
    d = ImageDraw.Draw(im)
    cell = size / 4
    s = size / 64
    for o, (jx, jy, js), tint in zip(scene["objects"], scene["jitter"], scene["tints"]):
        cx = (o["cell"] % 4 + 0.5) * cell + jx * s
        cy = (o["cell"] // 4 + 0.5) * cell + jy * s
        r = (5 + js * 0.5) * s
        col = tuple(tint)
        if o["kind"] == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
        elif o["kind"] == "square":
            d.rectangle([cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9], fill=col)
        else:
            d.polygon([(cx, cy - r), (cx - r, cy + r * 0.85), (cx + r, cy + r * 0.85)], fill=col)
    return im


# ----------------------------------------------------------------------------------------- bar_chart
def _bar_sample(rng: random.Random, level: int) -> tuple[dict, dict]:
    n = rng.randint(3, 5)
    colors = rng.sample(list(_COLORS), n)
    if level == 2:  # a unique tallest and shortest bar
        values = rng.sample(range(1, 10), n)
    else:
        values = [rng.randint(1, 9) for _ in range(n)]
    bars = [{"color": c, "value": v} for c, v in zip(colors, values)]
    if level == 1:
        spec = {"template": "sum_two", "colors": rng.sample(colors, 2)}
    elif level == 2:
        spec = {"template": "max_minus_min"}
    else:
        spec = {"template": "a_plus_b_minus_c", "colors": rng.sample(colors, 3)}
    scene = {"bars": bars, "tints": [_jitter_color(rng, _COLORS[b["color"]]) for b in bars],
             "background": _background(rng), "width": rng.uniform(0.55, 0.8)}
    return scene, spec


def _bar_question(spec: dict) -> tuple[str, list[str] | None]:
    t = spec["template"]
    if t == "sum_two":
        c1, c2 = spec["colors"]
        return f"What is the value of the {c1} bar plus the value of the {c2} bar?", None
    if t == "max_minus_min":
        return "What is the difference between the tallest bar and the shortest bar?", None
    if t == "a_plus_b_minus_c":
        c1, c2, c3 = spec["colors"]
        return f"What is the {c1} bar plus the {c2} bar minus the {c3} bar?", None
    raise ValueError(f"bar_chart: unknown template {t!r}")


def _bar_solve(scene: dict, spec: dict) -> tuple[str, list[str]]:
    val = {b["color"]: b["value"] for b in scene["bars"]}
    t = spec["template"]
    if t == "sum_two":
        c1, c2 = spec["colors"]
        a, b = val[c1], val[c2]
        return str(a + b), [f"The {c1} bar reaches {a}.", f"The {c2} bar reaches {b}, so {a} + {b} = {a + b}."]
    if t == "max_minus_min":
        hi = max(scene["bars"], key=lambda b: b["value"])
        lo = min(scene["bars"], key=lambda b: b["value"])
        d = hi["value"] - lo["value"]
        return str(d), [f"The tallest bar is {hi['color']} and reaches {hi['value']}.",
                        f"The shortest bar is {lo['color']} and reaches {lo['value']}.",
                        f"{hi['value']} - {lo['value']} = {d}."]
    if t == "a_plus_b_minus_c":
        c1, c2, c3 = spec["colors"]
        a, b, c = val[c1], val[c2], val[c3]
        r = a + b - c
        return str(r), [f"The {c1} bar reaches {a}.", f"The {c2} bar reaches {b}.", f"The {c3} bar reaches {c}.",
                        f"{a} + {b} - {c} = {r}."]
    raise ValueError(f"bar_chart: unknown template {t!r}")


def _bar_draw(scene: dict, size: int) -> Image:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), tuple(scene["background"]))
    d = ImageDraw.Draw(im)
    left, right, top, bottom = 0.08 * size, 0.97 * size, 0.04 * size, 0.94 * size
    unit = (bottom - top) / 10
    for v in range(1, 10):  # light gridlines at every unit make heights readable
        y = bottom - v * unit
        d.line([(left, y), (right, y)], fill=(200, 200, 200), width=1)
    d.line([(left, top), (left, bottom), (right, bottom)], fill=(60, 60, 60), width=max(1, size // 64))
    n = len(scene["bars"])
    slot = (right - left) / n
    w = slot * scene["width"]
    for i, (b, tint) in enumerate(zip(scene["bars"], scene["tints"])):
        x0 = left + i * slot + (slot - w) / 2
        d.rectangle([x0, bottom - b["value"] * unit, x0 + w, bottom - 1], fill=tuple(tint))
    return im


# ----------------------------------------------------------------------------------------- clock
def _fmt_time(h: int, m: int) -> str:
    h = h % 12 or 12
    return f"{h}:{m:02d}"


def _clock_sample(rng: random.Random, level: int) -> tuple[dict, dict]:
    h = rng.randint(1, 12)
    m = 0 if level == 1 else rng.choice([0, 15, 30, 45])
    if level == 1:
        spec = {"template": "later_hours", "hours": rng.randint(1, 11)}
    elif level == 2:
        spec = {"template": "later_minutes", "minutes": rng.choice([15, 30, 45, 60, 75, 90, 105, 120])}
    else:
        spec = {"template": "earlier_hm", "hours": rng.randint(1, 5), "minutes": rng.choice([15, 30, 45])}
    scene = {"hour": h, "minute": m, "center": [rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03)],
             "radius": rng.uniform(0.40, 0.46), "background": _background(rng),
             "hour_color": _jitter_color(rng, (170, 30, 30)), "minute_color": _jitter_color(rng, (30, 60, 170))}
    return scene, spec


def _clock_question(spec: dict) -> tuple[str, list[str] | None]:
    t = spec["template"]
    if t == "later_hours":
        return f"What time will the clock show in {_plural(spec['hours'], 'hour')}?", None
    if t == "later_minutes":
        return f"What time will the clock show in {spec['minutes']} minutes?", None
    if t == "earlier_hm":
        return (f"What time did the clock show {_plural(spec['hours'], 'hour')} and "
                f"{spec['minutes']} minutes ago?"), None
    raise ValueError(f"clock: unknown template {t!r}")


def _clock_solve(scene: dict, spec: dict) -> tuple[str, list[str]]:
    h, m = scene["hour"], scene["minute"]
    now = _fmt_time(h, m)
    t = spec["template"]
    if t == "later_hours":
        ans = _fmt_time(h + spec["hours"], 0)
        return ans, [f"The short hand points to {h} and the long hand points to 12, so the clock shows {now}.",
                     f"{now} plus {_plural(spec['hours'], 'hour')} is {ans}."]
    hand = {0: "12", 15: "3", 30: "6", 45: "9"}[m]
    if t == "later_minutes":
        total = h * 60 + m + spec["minutes"]
        ans = _fmt_time(total // 60, total % 60)
        return ans, [f"The short hand is at {h}{'' if m == 0 else ' or just past it'}, so the hour is {h}.",
                     f"The long hand points to {hand}, so the clock shows {now}.",
                     f"{now} plus {spec['minutes']} minutes is {ans}."]
    if t == "earlier_hm":
        mid_total = h * 60 + m - spec["hours"] * 60
        mid = _fmt_time((mid_total // 60) % 12, mid_total % 60)
        total = mid_total - spec["minutes"]
        ans = _fmt_time((total // 60) % 12, total % 60)
        return ans, [f"The short hand is at {h}{'' if m == 0 else ' or just past it'}, so the hour is {h}.",
                     f"The long hand points to {hand}, so the clock shows {now}.",
                     f"{_plural(spec['hours'], 'hour')} earlier it was {mid}.",
                     f"{spec['minutes']} minutes before {mid} is {ans}."]
    raise ValueError(f"clock: unknown template {t!r}")


def _clock_draw(scene: dict, size: int) -> Image:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), tuple(scene["background"]))
    d = ImageDraw.Draw(im)
    cx, cy = size * (0.5 + scene["center"][0]), size * (0.5 + scene["center"][1])
    r = size * scene["radius"]
    lw = max(1, round(size / 40))
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(250, 250, 245), outline=(40, 40, 40), width=lw)

    def point(angle_deg: float, length: float) -> tuple[float, float]:
        a = math.radians(angle_deg)
        return cx + length * math.sin(a), cy - length * math.cos(a)

    for k in range(12):
        inner = 0.72 if k % 3 == 0 else 0.84
        d.line([point(k * 30, r * inner), point(k * 30, r * 0.97)], fill=(40, 40, 40), width=lw)
    h, m = scene["hour"], scene["minute"]
    d.line([(cx, cy), point(m * 6, r * 0.85)], fill=tuple(scene["minute_color"]), width=lw)
    d.line([(cx, cy), point(((h % 12) + m / 60) * 30, r * 0.5)], fill=tuple(scene["hour_color"]), width=lw + 1)
    return im


# ----------------------------------------------------------------------------------------- grid_geometry
def _rect(rng: random.Random, max_side: int, grid: int) -> dict:
    w, h = rng.randint(1, max_side), rng.randint(1, max_side)
    return {"x": rng.randint(0, grid - w), "y": rng.randint(0, grid - h), "w": w, "h": h}


def _overlap(a: dict, b: dict) -> bool:
    return not (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"] or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"])


def _grid_sample(rng: random.Random, level: int) -> tuple[dict, dict]:
    grid = 8
    if level < 3:
        rects = [dict(_rect(rng, 6, grid), color=rng.choice(list(_COLORS)))]
        spec = {"template": "area" if level == 1 else "perimeter"}
    else:
        c1, c2 = rng.sample(list(_COLORS), 2)
        a = _rect(rng, 4, grid)
        while True:
            b = _rect(rng, 4, grid)
            if not _overlap(a, b):
                break
        rects = [dict(a, color=c1), dict(b, color=c2)]
        spec = {"template": "total_area", "colors": [c1, c2]}
    scene = {"grid": grid, "rects": rects, "tints": [_jitter_color(rng, _COLORS[r["color"]]) for r in rects],
             "background": _background(rng)}
    return scene, spec


def _grid_question(spec: dict) -> tuple[str, list[str] | None]:
    t = spec["template"]
    if t == "area":
        return "Each grid square has side 1. What is the area of the rectangle?", None
    if t == "perimeter":
        return "Each grid square has side 1. What is the perimeter of the rectangle?", None
    if t == "total_area":
        c1, c2 = spec["colors"]
        return f"Each grid square has side 1. What is the total area of the {c1} and {c2} rectangles?", None
    raise ValueError(f"grid_geometry: unknown template {t!r}")


def _grid_solve(scene: dict, spec: dict) -> tuple[str, list[str]]:
    t = spec["template"]
    if t in ("area", "perimeter"):
        r = scene["rects"][0]
        w, h = r["w"], r["h"]
        if t == "area":
            return str(w * h), [f"The rectangle is {w} squares wide.",
                                f"It is {h} squares tall, so its area is {w} * {h} = {w * h}."]
        return str(2 * (w + h)), [f"The rectangle is {w} squares wide.", f"It is {h} squares tall.",
                                  f"Its perimeter is 2 * ({w} + {h}) = {2 * (w + h)}."]
    if t == "total_area":
        by = {r["color"]: r for r in scene["rects"]}
        c1, c2 = spec["colors"]
        a, b = by[c1], by[c2]
        a1, a2 = a["w"] * a["h"], b["w"] * b["h"]
        return str(a1 + a2), [f"The {c1} rectangle is {a['w']} by {a['h']}, so its area is {a1}.",
                              f"The {c2} rectangle is {b['w']} by {b['h']}, so its area is {a2}.",
                              f"{a1} + {a2} = {a1 + a2}."]
    raise ValueError(f"grid_geometry: unknown template {t!r}")


def _grid_draw(scene: dict, size: int) -> Image:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), tuple(scene["background"]))
    d = ImageDraw.Draw(im)
    g = scene["grid"]
    cell = (size - 1) / g
    for r, tint in zip(scene["rects"], scene["tints"]):
        d.rectangle([r["x"] * cell, r["y"] * cell, (r["x"] + r["w"]) * cell, (r["y"] + r["h"]) * cell],
                    fill=tuple(tint))
    for k in range(g + 1):
        p = round(k * cell)
        d.line([(p, 0), (p, size - 1)], fill=(150, 150, 150), width=1)
        d.line([(0, p), (size - 1, p)], fill=(150, 150, 150), width=1)
    return im


# ----------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class _Family:
    category: str
    skill: str
    sample: Callable[[random.Random, int], tuple[dict, dict]]
    question: Callable[[dict], tuple[str, list[str] | None]]
    solve: Callable[[dict, dict], tuple[str, list[str]]]
    draw: Callable[[dict, int], Any]
    answer_type: str = "integer"


FAMILIES: dict[str, _Family] = {
    "shape_count": _Family("MWP", "arithmetic reasoning", _shape_sample, _shape_question, _shape_solve, _shape_draw),
    "bar_chart": _Family("FQA", "statistical reasoning", _bar_sample, _bar_question, _bar_solve, _bar_draw),
    "clock": _Family("VQA", "numeric commonsense", _clock_sample, _clock_question, _clock_solve, _clock_draw, "text"),
    "grid_geometry": _Family("GPS", "geometry reasoning", _grid_sample, _grid_question, _grid_solve, _grid_draw),
}
#: family -> MathVista-like sub-task abbreviation (``meta["category"]``).
CATEGORIES: dict[str, str] = {k: v.category for k, v in FAMILIES.items()}


def render(family: str, scene: dict, size: int = 64) -> Image:
    """Draw ``scene`` of ``family`` as an RGB PIL image of ``size`` x ``size`` (deterministic)."""
    if family not in FAMILIES:
        raise ValueError(f"render: unknown family {family!r}; choose from {sorted(FAMILIES)}")
    return FAMILIES[family].draw(scene, size)


def solve(family: str, scene: dict, spec: dict) -> tuple[str, list[str]]:
    """The answer and reasoning steps for question ``spec`` about ``scene``, computed from the scene
    alone (what a perfect image reader would answer). Raises KeyError/ValueError when the spec does not
    apply to the scene (a colour it asks about is absent)."""
    if family not in FAMILIES:
        raise ValueError(f"solve: unknown family {family!r}; choose from {sorted(FAMILIES)}")
    return FAMILIES[family].solve(scene, spec)


def _problem_key(family: str, scene: dict, spec: dict) -> str:
    """The underlying problem without drawing jitter (what makes two prompts 'the same question')."""
    if family == "shape_count":
        core: Any = sorted((o["cell"], o["kind"], o["color"]) for o in scene["objects"])
    elif family == "bar_chart":
        core = [(b["color"], b["value"]) for b in scene["bars"]]
    elif family == "clock":
        core = (scene["hour"], scene["minute"])
    else:
        core = [(r["x"], r["y"], r["w"], r["h"], r["color"]) for r in scene["rects"]]
    return json.dumps([family, spec, core], sort_keys=True)


def _bucket(key: str, fractions: tuple[float, float, float]) -> str:
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64
    test_f, val_f = fractions[2], fractions[1]
    if u < test_f:
        return "test"
    if u < test_f + val_f:
        return "val"
    return "train"


def _norm_split(split: str) -> str:
    s = _SPLIT_ALIASES.get(split, split)
    if s not in SPLITS:
        raise ValueError(f"synthetic: unknown split {split!r}; use 'train', 'val' (or 'validation') or 'test'")
    return s


def make_synthetic_split(split: str, n: int, config: SyntheticConfig | None = None,
                         image_dir: str | os.PathLike | None = None, start: int = 0) -> list[Prompt]:
    """Generate prompts ``start .. start+n-1`` of a split.

    Args:
        split: ``"train"``, ``"val"`` (alias ``"validation"``) or ``"test"``.
        n: number of prompts.
        config: what to generate (default :class:`SyntheticConfig`).
        image_dir: if given, each image is saved as ``<image_dir>/<split>/<id>.png`` and ``Prompt.images``
            holds that path; otherwise the PIL image itself (in memory).
        start: index of the first prompt (prompts are addressable: item i never depends on n).

    Returns:
        Prompts with ``answer`` (option letter for multiple choice, a number, or ``h:mm``), ``choices``
        for multiple choice, and ``meta`` holding ``category``, ``family``, ``difficulty``, ``cot``,
        ``scene``, ``spec``, ``split``, ``answer_type``, ``question_type``.
    """
    cfg = config or SyntheticConfig()
    cfg.validate()
    split = _norm_split(split)
    if n < 0 or start < 0:
        raise ValueError(f"make_synthetic_split: n and start must be >= 0, got n={n}, start={start}")
    out_dir = None
    if image_dir is not None:
        out_dir = Path(image_dir) / split
        out_dir.mkdir(parents=True, exist_ok=True)
    prompts = []
    for i in range(start, start + n):
        rng = random.Random(f"mstar-synthetic/{cfg.seed}/{split}/{i}")
        fam_name = cfg.families[i % len(cfg.families)]
        fam = FAMILIES[fam_name]
        for _attempt in range(10_000):
            level = rng.choice(cfg.levels)
            scene, spec = fam.sample(rng, level)
            if _bucket(_problem_key(fam_name, scene, spec), cfg.split_fractions) == split:
                break
        else:  # pragma: no cover - the problem spaces are far larger than this
            raise ValueError(f"synthetic: no {split} problem found for family {fam_name!r} at levels {cfg.levels}")
        question, choices = fam.question(spec)
        answer, steps = fam.solve(scene, spec)
        pid = f"synth-{split}-{i:06d}"
        image = fam.draw(scene, cfg.image_size)
        img: Any = image
        if out_dir is not None:
            path = out_dir / f"{pid}.png"
            image.save(path, format="PNG")
            img = str(path)
        prompts.append(Prompt(
            id=pid, question=question, images=[img], answer=answer, choices=choices,
            meta={"category": fam.category, "family": fam_name, "skill": fam.skill, "difficulty": level,
                  "n_steps": len(steps), "cot": format_cot(steps, answer), "scene": scene, "spec": spec,
                  "split": split, "answer_type": "text" if choices else fam.answer_type,
                  "question_type": "multi_choice" if choices else "free_form"},
        ))
    return prompts


def make_synthetic_dataset(n_train: int = 2000, n_val: int = 250, n_test: int = 500,
                           config: SyntheticConfig | None = None,
                           image_dir: str | os.PathLike | None = None) -> dict[str, list[Prompt]]:
    """The three splits: ``{"train": [...], "val": [...], "test": [...]}`` (validation defaults to 250
    prompts, the paper's size)."""
    return {s: make_synthetic_split(s, n, config, image_dir)
            for s, n in (("train", n_train), ("val", n_val), ("test", n_test))}


def export_synthetic(out_dir: str | os.PathLike, n_train: int = 2000, n_val: int = 250, n_test: int = 500,
                     config: SyntheticConfig | None = None) -> dict[str, Path]:
    """Write the dataset as files: ``<out_dir>/images/<split>/<id>.png`` and one flat-layout JSONL per
    split (``train.jsonl``, ``val.jsonl``, ``test.jsonl``) with image paths relative to ``out_dir``, so
    ``load_prompts(out_dir / "train.jsonl")`` reads it back. Returns split -> JSONL path."""
    out = Path(out_dir)
    data = make_synthetic_dataset(n_train, n_val, n_test, config, out / "images")
    paths = {}
    for split, prompts in data.items():
        p = out / f"{split}.jsonl"
        tmp = p.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for pr in prompts:
                row = {"id": pr.id, "image": os.path.relpath(pr.images[0], out), "question": pr.question,
                       "answer": pr.answer, "choices": pr.choices, **pr.meta}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, p)
        paths[split] = p
    return paths


def prompt_source(split: str, n: int, data: DataConfig, start: int = 0) -> list[Prompt]:
    """The ``synthetic`` prompt source of a run config (``data.train: synthetic``): ``n`` prompts of
    ``split`` with the config's ``synthetic_*`` settings, from problem ``start`` on.

    Raises:
        UserError: ``n`` < 1 (``data.n_<split>`` must be set for synthetic data).
    """
    if n < 1:
        raise UserError(f"config: data.n_{split} must be >= 1 for synthetic data, got {n}")
    sc = SyntheticConfig(families=tuple(data.synthetic_families), levels=tuple(data.synthetic_levels),
                         image_size=data.synthetic_image_size, seed=data.synthetic_seed)
    return make_synthetic_split(split, n, sc, start=start)
