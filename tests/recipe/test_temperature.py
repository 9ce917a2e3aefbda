"""TemperatureController: the grid, when it adapts, what it picks, checkpoints, argument checks."""

from __future__ import annotations

import json

import pytest

from mstar_fast.recipe.monitor import TemperatureMetrics, ValidationReport
from mstar_fast.recipe.temperature import DEFAULT_GRID, TemperatureController, default_grid


def test_default_grid_is_exact():
    assert DEFAULT_GRID == (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6)
    assert 0.6 in DEFAULT_GRID and 0.7 in DEFAULT_GRID  # 0.3 + 3 * 0.1 would be 0.6000000000000001
    assert TemperatureController().grid == DEFAULT_GRID
    assert default_grid(0.5, 1.0, 0.1) == (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def peaked(best: float, grid=DEFAULT_GRID) -> dict[float, float]:
    """A stub metric with its single maximum at ``best``."""
    return {t: 1.0 - abs(t - best) for t in grid}


def test_picks_argmax_and_adapts_only_every_adapt_every():
    c = TemperatureController(adapt_every=2)
    assert c.temperature == 1.0
    seen = []
    # The optimum moves every iteration; T may follow only after iterations 2, 4, 6.
    optima = {1: 0.5, 2: 1.4, 3: 0.3, 4: 0.7, 5: 1.6, 6: 0.9}
    for it in range(1, 7):
        assert c.should_adapt(it) == (it % 2 == 0)
        seen.append(c.update(it, peaked(optima[it])))
    assert seen == [1.0, 1.4, 1.4, 0.7, 0.7, 0.9]
    assert [h["iteration"] for h in c.history] == [2, 4, 6]
    assert c.history[0]["previous"] == 1.0 and c.history[0]["temperature"] == 1.4


def test_adapt_every_three_and_iteration_zero():
    c = TemperatureController(adapt_every=3)
    assert [it for it in range(0, 10) if c.should_adapt(it)] == [3, 6, 9]
    assert c.update(0, peaked(0.4)) == 1.0  # nothing trained yet: never adapts
    assert c.update(3, peaked(0.4)) == 0.4


def test_no_grid_after_the_last_iteration():
    # Nothing samples at a T chosen after the last iteration, so its validation grid is not sampled.
    c = TemperatureController(adapt_every=2, last_iteration=8)
    assert [it for it in range(0, 9) if c.should_adapt(it)] == [2, 4, 6]
    assert c.grid_to_sample(8) == [1.0]
    assert c.update(8, peaked(0.4)) == 1.0 and c.history == []
    assert TemperatureController(adapt_every=2).should_adapt(8)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="last_iteration"):
            TemperatureController(last_iteration=bad)


def test_ties_go_to_closest_then_lower():
    c = TemperatureController(adapt_every=1, initial=1.0)
    flat = {t: 0.5 for t in DEFAULT_GRID}
    flat[0.4] = flat[1.5] = 0.8
    assert c.update(1, flat) == 1.5  # 1.5 is 0.5 from 1.0, 0.4 is 0.6 away
    flat = {t: 0.2 for t in DEFAULT_GRID}
    flat[0.3] = flat[1.3] = 0.9
    flat[9.9] = 1.0  # off the grid: ignored, however high
    assert c.update(2, flat) == 1.3  # from T = 1.5, 1.3 is closer than 0.3
    c2 = TemperatureController(adapt_every=1, initial=1.0)
    eq = {t: 0.7 for t in DEFAULT_GRID}
    eq[0.9] = eq[1.1] = 0.9  # equally far from 1.0: the lower one
    assert c2.update(1, eq) == 0.9
    c3 = TemperatureController(adapt_every=1, initial=1.0)
    assert c3.update(1, {t: 0.5 for t in DEFAULT_GRID}) == 1.0  # all equal: stay


def test_static_never_changes():
    c = TemperatureController(criterion="static", initial=0.8)
    for it in range(1, 6):
        assert not c.should_adapt(it)
        assert c.grid_to_sample(it) == [0.8]
        assert c.update(it, peaked(0.3)) == 0.8


def test_grid_to_sample():
    c = TemperatureController(adapt_every=2, initial=1.05)  # off the grid
    assert c.grid_to_sample(1) == [1.05]
    temps = c.grid_to_sample(2)
    assert temps == sorted([*DEFAULT_GRID, 1.05])
    c.update(2, peaked(0.6))
    assert c.grid_to_sample(3) == [0.6]
    assert c.grid_to_sample(4) == list(DEFAULT_GRID)  # the current T is on the grid: no extra entry


def report(values: dict[float, float | None], criterion: str = "reward_pass_at_2") -> ValidationReport:
    per = {}
    for t, v in values.items():
        rp2 = v if criterion == "reward_pass_at_2" else 0.0
        pak = v if criterion == "pass_at_k" else 0.0
        per[t] = TemperatureMetrics(t, pass_at_k=pak, reward_pass_at_2=rp2, sample_accuracy=0.1,
                                    pass_at_k_minus_greedy=pak - 0.1)
    return ValidationReport(k=4, n_prompts=10, greedy_accuracy=0.1, per_temperature=per)


@pytest.mark.parametrize("criterion", ["reward_pass_at_2", "pass_at_k"])
def test_reads_its_criterion_from_a_validation_report(criterion):
    c = TemperatureController(adapt_every=2, criterion=criterion)
    rep = report(peaked(1.2), criterion)
    assert c.update(2, rep) == 1.2
    # Through JSON (string keys) as a resumed run would see it.
    rep2 = ValidationReport.from_dict(json.loads(json.dumps(rep.to_dict())))
    c2 = TemperatureController(adapt_every=2, criterion=criterion)
    assert c2.update(2, rep2) == 1.2


def test_update_errors():
    c = TemperatureController(adapt_every=2)
    partial = peaked(0.5)
    del partial[0.9]
    with pytest.raises(ValueError, match="no reward_pass_at_2 at grid temperature 0.9"):
        c.update(2, partial)
    assert c.update(1, partial) == 1.0  # not an adapt iteration: the report is not read
    none = report({t: None for t in DEFAULT_GRID})
    with pytest.raises(ValueError, match="without a PRM scorer"):
        c.update(2, none)
    bad = peaked(0.5)
    bad[0.5] = float("nan")
    with pytest.raises(ValueError, match="not a finite number"):
        c.update(2, bad)
    with pytest.raises(ValueError, match="ValidationReport or a mapping"):
        c.update(2, [0.1, 0.2])
    with pytest.raises(ValueError, match="iteration"):
        c.should_adapt(-1)
    assert c.temperature == 1.0 and c.history == []


@pytest.mark.parametrize("kwargs, msg", [
    (dict(grid=[]), "grid is empty"),
    (dict(grid=[0.5, 0.0]), "finite and > 0"),
    (dict(grid=[0.5, float("inf")]), "finite and > 0"),
    (dict(grid=[0.5, 0.7, 0.5]), "repeats 0.5"),
    (dict(initial=0.0), "initial"),
    (dict(initial=float("nan")), "initial"),
    (dict(adapt_every=0), "adapt_every"),
    (dict(adapt_every=1.5), "adapt_every"),
    (dict(adapt_every=True), "adapt_every"),
    (dict(criterion="pass@k"), "criterion"),
])
def test_bad_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        TemperatureController(**kwargs)


def test_state_dict_round_trip():
    c = TemperatureController(adapt_every=2)
    c.update(2, peaked(0.7))
    state = json.loads(json.dumps(c.state_dict()))  # checkpoints store it as JSON
    c2 = TemperatureController(adapt_every=2)
    c2.load_state_dict(state)
    assert c2.temperature == 0.7 and c2.history == c.history
    # Both continue identically.
    assert c.update(4, peaked(1.1)) == c2.update(4, peaked(1.1)) == 1.1
    with pytest.raises(ValueError, match="adapt_every=2"):
        TemperatureController(adapt_every=3).load_state_dict(state)
    with pytest.raises(ValueError, match="criterion"):
        TemperatureController(adapt_every=2, criterion="pass_at_k").load_state_dict(state)
    with pytest.raises(ValueError, match="missing keys"):
        c2.load_state_dict({"temperature": 1.0})


def test_registered_criteria_are_the_config_names():
    from mstar_fast.constants import TEMPERATURE_CRITERIA
    from mstar_fast.recipe.temperature import criteria, register_criterion

    assert set(criteria()) == set(TEMPERATURE_CRITERIA)
    with pytest.raises(ValueError, match="already registered"):
        register_criterion("static")(lambda report: None)
