"""The synthetic multimodal task: determinism, disjoint splits, the CoT format, distinct images, and
that the answer needs the image (text alone stays near chance; the scene gives 100%)."""

import collections
import hashlib
import math
import random
import re

import pytest

from mstar_fast.data import load_prompts
from mstar_fast.demo.synthetic import SyntheticConfig, export_synthetic, make_synthetic_split
from mstar_fast.demo.synthetic import CATEGORIES, FAMILIES, _problem_key, render, solve
from mstar_fast.rewards import answers_match, extract_answer

N_TRAIN, N_TEST = 1600, 400


@pytest.fixture(scope="module")
def data():
    return {"train": make_synthetic_split("train", N_TRAIN), "val": make_synthetic_split("val", 200),
            "test": make_synthetic_split("test", N_TEST)}


def _img_hash(im) -> str:
    return hashlib.md5(im.tobytes()).hexdigest()


def test_deterministic_per_seed_and_prefix_stable():
    a = make_synthetic_split("val", 12)
    b = make_synthetic_split("val", 12)
    assert [(p.question, p.answer, p.choices, _img_hash(p.images[0])) for p in a] == \
           [(p.question, p.answer, p.choices, _img_hash(p.images[0])) for p in b]
    tail = make_synthetic_split("val", 4, start=8)
    assert [p.id for p in tail] == [p.id for p in a[8:]]
    assert [_img_hash(p.images[0]) for p in tail] == [_img_hash(p.images[0]) for p in a[8:]]
    other = make_synthetic_split("val", 12, SyntheticConfig(seed=1))
    assert sum(_img_hash(x.images[0]) == _img_hash(y.images[0]) for x, y in zip(a, other)) == 0


def test_splits_are_disjoint(data):
    keys = {s: {_problem_key(p.meta["family"], p.meta["scene"], p.meta["spec"]) for p in ps}
            for s, ps in data.items()}
    assert not keys["train"] & keys["test"]
    assert not keys["train"] & keys["val"]
    assert not keys["val"] & keys["test"]
    ids = [p.id for ps in data.values() for p in ps]
    assert len(ids) == len(set(ids))


def test_cot_format_parses_back_to_the_gold_answer(data):
    for p in data["test"]:
        cot = p.meta["cot"]
        body, _, ans = cot.partition("\n\n# Answer\n\n")
        steps = body.split("\n\n")
        assert ans == p.answer and 2 <= len(steps) <= 4, cot
        assert len(steps) == p.meta["n_steps"] and all(s.strip() for s in steps)
        assert extract_answer(cot) == p.answer
        assert answers_match(extract_answer(cot), p.answer, p.choices)


def test_categories_levels_and_choices(data):
    ps = data["train"]
    assert {p.meta["category"] for p in ps} == {"MWP", "FQA", "VQA", "GPS"} == set(CATEGORIES.values())
    assert {p.meta["difficulty"] for p in ps} == {1, 2, 3}
    fam = collections.Counter(p.meta["family"] for p in ps)
    assert set(fam.values()) == {N_TRAIN // 4}  # round-robin: balanced
    mc = [p for p in ps if p.choices]
    assert mc and all(re.fullmatch(r"[A-C]", p.answer) for p in mc)
    assert all(p.meta["question_type"] == "multi_choice" for p in mc)
    by_level = collections.defaultdict(set)
    for p in ps:
        by_level[p.meta["difficulty"]].add(p.meta["n_steps"])
    assert by_level[1] == {2} and by_level[2] == {3} and by_level[3] <= {3, 4}


def test_images_differ_and_match_their_scene(data):
    ps = data["train"][:400] + data["test"][:100]
    hashes = [_img_hash(p.images[0]) for p in ps]
    assert len(set(hashes)) == len(hashes)
    for p in ps[:40]:
        assert p.images[0].size == (64, 64) and p.images[0].mode == "RGB"
        assert _img_hash(render(p.meta["family"], p.meta["scene"], 64)) == _img_hash(p.images[0])


def test_bar_heights_are_readable_from_pixels(data):
    """A pixel-level reader recovers every bar value, so the drawing carries the answer."""
    size = 64
    for p in [p for p in data["test"] if p.meta["family"] == "bar_chart"][:30]:
        im = p.images[0]
        px = im.load()
        bottom, top = 0.94 * size, 0.04 * size
        unit = (bottom - top) / 10
        for bar, tint in zip(p.meta["scene"]["bars"], p.meta["scene"]["tints"]):
            ys = [y for x in range(size) for y in range(size)
                  if sum(abs(a - b) for a, b in zip(px[x, y], tint)) < 12]
            assert ys, bar
            assert round((bottom - min(ys)) / unit) == bar["value"]


def _text_only_majority(train, test) -> float:
    """Best text-only lookup: majority answer per exact question (with its options) seen in train,
    else per question template, else overall."""
    by_q = collections.defaultdict(collections.Counter)
    by_t = collections.defaultdict(collections.Counter)
    overall = collections.Counter()
    for p in train:
        by_q[(p.question, tuple(p.choices or ()))][p.answer] += 1
        by_t[p.meta["spec"]["template"]][p.answer] += 1
        overall[p.answer] += 1
    hits = 0
    for p in test:
        c = by_q.get((p.question, tuple(p.choices or ()))) or by_t.get(p.meta["spec"]["template"]) or overall
        hits += c.most_common(1)[0][0] == p.answer
    return hits / len(test)


def _bag_of_words_nb(train, test) -> float:
    """Multinomial naive Bayes on the question's words (and options), fit on train."""
    tok = lambda p: re.findall(r"[a-z]+|\d+", (p.question + " " + " ".join(p.choices or ())).lower())  # noqa: E731
    prior, totals, vocab = collections.Counter(), collections.Counter(), set()
    counts = collections.defaultdict(collections.Counter)
    for p in train:
        prior[p.answer] += 1
        for w in tok(p):
            counts[p.answer][w] += 1
            totals[p.answer] += 1
            vocab.add(w)
    labels, v = list(prior), len(vocab) + 1
    hits = 0
    for p in test:
        ws = tok(p)
        best = max(labels, key=lambda a: math.log(prior[a]) + sum(
            math.log((counts[a][w] + 1) / (totals[a] + v)) for w in ws))
        hits += best == p.answer
    return hits / len(test)


def test_text_alone_stays_near_chance_while_the_image_solves_it(data):
    train, test = data["train"], data["test"]
    # Reading the image: the generator's ground truth from the scene answers everything.
    assert all(solve(p.meta["family"], p.meta["scene"], p.meta["spec"])[0] == p.answer for p in test)
    majority = _text_only_majority(train, test)
    nb = _bag_of_words_nb(train, test)
    # A shuffled-image baseline: the same question answered from another prompt's scene.
    rng = random.Random(0)
    by_fam = collections.defaultdict(list)
    for p in test:
        by_fam[p.meta["family"]].append(p)
    hits = 0
    for p in test:
        other = rng.choice([q for q in by_fam[p.meta["family"]] if q is not p])
        try:
            hits += solve(p.meta["family"], other.meta["scene"], p.meta["spec"])[0] == p.answer
        except (KeyError, ValueError, IndexError):
            pass
    shuffled = hits / len(test)
    # Chance is the answer prior of each question template (about 0.16 here): the question's words
    # must add nothing on top of it.
    by_t = collections.defaultdict(collections.Counter)
    for p in train:
        by_t[p.meta["spec"]["template"]][p.answer] += 1
    prior = sum(by_t[p.meta["spec"]["template"]].most_common(1)[0][0] == p.answer for p in test) / len(test)
    assert majority <= prior + 0.05 and nb <= prior + 0.05, (majority, nb, prior)
    assert majority < 0.25, majority
    assert nb < 0.25, nb
    assert shuffled < 0.25, shuffled


def test_image_dir_and_export_roundtrip(tmp_path):
    cfg = SyntheticConfig(image_size=96, families=("clock", "bar_chart"), levels=(1,))
    ps = make_synthetic_split("test", 4, cfg, image_dir=tmp_path / "imgs")
    assert all(p.images[0].endswith(".png") and (tmp_path / "imgs" / "test").exists() for p in ps)
    paths = export_synthetic(tmp_path / "ds", n_train=6, n_val=2, n_test=3, config=cfg)
    loaded, rep = load_prompts(paths["train"])
    orig = make_synthetic_split("train", 6, cfg)
    assert rep.n_skipped == 0 and [p.id for p in loaded] == [p.id for p in orig]
    for a, b in zip(loaded, orig):
        assert (a.question, a.answer, a.choices, a.meta["cot"], a.meta["category"]) == \
               (b.question, b.answer, b.choices, b.meta["cot"], b.meta["category"])
        from PIL import Image

        with Image.open(a.images[0]) as im:
            assert im.size == (96, 96) and _img_hash(im.convert("RGB")) == _img_hash(b.images[0])


def test_config_validation():
    with pytest.raises(ValueError, match="families"):
        make_synthetic_split("train", 1, SyntheticConfig(families=("nope",)))
    with pytest.raises(ValueError, match="levels"):
        make_synthetic_split("train", 1, SyntheticConfig(levels=(4,)))
    with pytest.raises(ValueError, match="split_fractions"):
        make_synthetic_split("train", 1, SyntheticConfig(split_fractions=(0.5, 0.5, 0.5)))
    with pytest.raises(ValueError, match="unknown split"):
        make_synthetic_split("holdout", 1)
    assert len(make_synthetic_split("validation", 2)) == 2
    assert set(FAMILIES) == set(CATEGORIES)
