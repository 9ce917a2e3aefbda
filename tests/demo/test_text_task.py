"""The text-only task (``synthetic_text``): the synthetic grid_geometry problems with the image described."""

from __future__ import annotations

import re

import pytest

from mstar_fast.config import DataConfig
from mstar_fast.constants import PROMPT_SOURCES, resolve
from mstar_fast.demo.synthetic import prompt_source
from mstar_fast.errors import UserError


def test_same_problems_without_images():
    d = DataConfig(synthetic_families=["grid_geometry"], synthetic_levels=[1, 2, 3])
    text = resolve(PROMPT_SOURCES["synthetic_text"])("train", 12, d)
    images = prompt_source("train", 12, d)
    assert [p.id for p in text] == [p.id for p in images] and [p.answer for p in text] == [p.answer for p in images]
    for t, im in zip(text, images):
        assert not t.images and t.question.endswith(im.question) and t.meta["cot"] == im.meta["cot"]
        corners = [tuple(map(int, c)) for c in re.findall(r"\((\d+), (\d+)\)", t.question)]
        rects = im.meta["scene"]["rects"]
        assert len(corners) == 2 * len(rects)
        for r, (a, b) in zip(rects, zip(corners[::2], corners[1::2])):
            assert (b[0] - a[0], b[1] - a[1]) == (r["w"], r["h"]) and r["color"] in t.question


def test_other_families_are_refused():
    with pytest.raises(UserError, match="grid_geometry"):
        resolve(PROMPT_SOURCES["synthetic_text"])("train", 4, DataConfig(synthetic_families=["clock"]))
