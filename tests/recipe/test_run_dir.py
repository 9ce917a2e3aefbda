"""The run directory: a stage command on a directory that holds a different run refuses (as ``mstar run``
does on any existing run); the same run, or a change to a stage not run yet, continues."""

from __future__ import annotations

import pytest

from mstar_fast.config import RunConfig, save_config
from mstar_fast.errors import UserError
from mstar_fast.recipe.run_dir import RunDir, read_metrics
from mstar_fast.train.distributed import World


def _cfg(run_dir, **changes) -> RunConfig:
    cfg = RunConfig(run_dir=str(run_dir))
    for key, value in changes.items():
        section, _, name = key.partition("__")
        setattr(getattr(cfg, section), name, value) if name else setattr(cfg, section, value)
    return cfg


def test_a_new_run_refuses_a_directory_holding_one(tmp_path):
    run = RunDir(tmp_path / "r", World.single())
    run.claim(_cfg(run.path), resume=False, stop_after=None)
    assert (run.path / "config.yaml").is_file()
    run.claim(_cfg(run.path, seed=1), resume=False, stop_after=None)  # only a config there: no run yet
    run.write_stage("base", {"done": True})  # now the run got somewhere
    with pytest.raises(UserError, match="already holds a run"):
        run.claim(_cfg(run.path), resume=False, stop_after=None)
    run.claim(_cfg(run.path), resume=True, stop_after=None)  # --resume: continues


def test_stage_commands_refuse_a_different_run(tmp_path):
    run = RunDir(tmp_path / "r", World.single())
    run.claim(_cfg(run.path), resume=True, stop_after="warmup")
    run.write_stage("base", {"done": True})
    run.claim(_cfg(run.path), resume=True, stop_after="prm-data")  # the same run: continues
    with pytest.raises(UserError, match=r"holds a different run: its config.yaml has seed=0, this one 1"):
        run.claim(_cfg(run.path, seed=1), resume=True, stop_after="warmup")
    with pytest.raises(UserError, match="data.n_val"):
        run.claim(_cfg(run.path, data__n_val=7), resume=True, stop_after="prm")
    # Where it runs and logs may change; so may a stage that has not run yet ...
    run.claim(_cfg(run.path, model__device="cpu", log__progress=False, prm__lr=1e-3), resume=True, stop_after="prm")
    run.claim(_cfg(run.path, model__prm=str(tmp_path)), resume=True, stop_after="prm")
    # ... but not once its output exists: the labels fix how they were made, the PRM what it was trained from.
    (run.path / "prm_data").mkdir()
    with pytest.raises(UserError, match="prm.m"):
        run.claim(_cfg(run.path, model__prm=str(tmp_path), prm__m=3), resume=True, stop_after="prm")
    run.claim(_cfg(run.path, prm__lr=1e-2), resume=True, stop_after="prm")  # PRM training: not run yet
    (run.path / "prm").mkdir()
    with pytest.raises(UserError, match="model.prm"):
        run.claim(_cfg(run.path, model__prm=str(tmp_path), prm__lr=1e-2), resume=True, stop_after="prm")


def test_metrics_truncate_to_the_checkpointed_iteration(tmp_path):
    run = RunDir(tmp_path, World.single())
    for i in range(4):
        run.append_metrics({"iteration": i})
    run.truncate_metrics(1)
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [0, 1] == [r["iteration"] for r in run.metrics()]


def test_saved_config_round_trip_is_the_same_run(tmp_path):
    cfg = _cfg(tmp_path / "r", seed=5)
    save_config(cfg, tmp_path / "r" / "config.yaml")
    RunDir(tmp_path / "r", World.single()).claim(_cfg(tmp_path / "r", seed=5), resume=True, stop_after="warmup")


def test_metrics_and_stages_are_strict_json(tmp_path):
    """A NaN loss (an iteration that selected nothing) or an infinite value is written as null: every line of
    metrics.jsonl and stages.json parses under a strict JSON reader."""
    import json

    def strict(text: str):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in {text!r}"))

    run = RunDir(tmp_path / "r", World.single())
    run.path.mkdir()
    run.write_stage("base", {"loss": float("nan"), "seconds": 1.5})
    run.append_metrics({"iteration": 0, "train_loss": float("nan"), "by_t": {"0.7": float("inf")},
                        "list": [1.0, float("-inf")]})
    run.append_metrics({"iteration": 1, "train_loss": 0.25})
    assert strict((run.path / "stages.json").read_text()) == {"base": {"loss": None, "seconds": 1.5}}
    lines = [strict(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0] == {"iteration": 0, "train_loss": None, "by_t": {"0.7": None}, "list": [1.0, None]}
    run.truncate_metrics(1)  # the rewrite stays strict too
    assert [strict(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()] == lines


def test_time_table_lists_every_stage_and_iteration():
    from mstar_fast.recipe.run_dir import time_table

    stages = {"base": {"seconds": 30.0, "seconds_build": 2.0},
              "warmup": {"seconds": 50.0, "seconds_sample": 20.0, "seconds_train": 10.0, "seconds_test_base": 9.0,
                         "seconds_test": 11.0},
              "prm": {"seconds_data": 15.0, "seconds_train": 25.0}}
    rows = [{"iteration": 0, "seconds_monitor": 7.0, "seconds_test": None},
            {"iteration": 1, "seconds_sample": 40.0, "seconds_score": 4.0, "seconds_train": 12.0,
             "seconds_monitor": 6.0, "seconds_test": 8.0}]
    table = time_table(stages, rows).splitlines()
    assert table[1] == "| stage | sampling | PRM scoring | training | monitor | test eval | total |"
    assert table[3] == "| base model | - | - | 30 | - | - | 32 |"
    assert table[4] == "| warm-up | 20 | - | 10 | - | 20 | 50 |"
    assert table[5] == "| PRM (labels, training) | 15 | - | 25 | - | - | 40 |"
    assert table[6] == "| iteration 0 | - | - | - | 7 | - | 7 |"
    assert table[7] == "| iteration 1 | 40 | 4 | 12 | 6 | 8 | 70 |"
    assert table[8] == "| all | 75 | 4 | 77 | 13 | 28 | 199 |"
