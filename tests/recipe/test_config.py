"""Run configs: YAML load/save round trip, dotted overrides with type checks, errors that name the key,
the shipped configs (paper hyper-parameters) and the demo config equal to the demo's built-in settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from mstar_fast.config import RunConfig, apply_overrides, config_to_dict, load_config, save_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_are_the_paper_recipe():
    cfg = RunConfig()
    cfg.validate()
    assert cfg.train.mode == "continuous" and cfg.train.lr == 1e-6 and cfg.train.lr_schedule == "constant"
    assert cfg.train.global_batch_size == 128
    assert cfg.iterate.k == 16 and cfg.iterate.interval == 0.25
    assert cfg.iterate.select == "topk" and cfg.iterate.select_k == 2
    assert cfg.temperature.criterion == "reward_pass_at_2" and cfg.temperature.adapt_every == 2
    assert cfg.temperature.grid == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6]
    assert cfg.prm.m == 8 and cfg.prm.soft and cfg.prm.head == "reward_tokens"
    assert not cfg.pseudo.enabled


def test_overrides_parse_and_check_types():
    cfg = RunConfig()
    apply_overrides(cfg, ["train.lr=2e-5", "iterate.k=8", "temperature.grid=[0.5, 1.0]", "model.prm=null",
                          "train.betas=[0.9, 0.95]", "log.wandb=true", "data.instruction=Think step by step.",
                          "model.tiny.hidden_size=64", "run_dir=runs/x", "iterate.steps=3"])
    assert cfg.train.lr == 2e-5 and isinstance(cfg.train.lr, float)  # YAML 1.1 reads "2e-5" as a string
    assert cfg.iterate.k == 8 and cfg.temperature.grid == [0.5, 1.0] and cfg.model.prm is None
    assert cfg.train.betas == (0.9, 0.95) and cfg.log.wandb is True
    assert cfg.data.instruction == "Think step by step." and cfg.model.tiny.hidden_size == 64
    assert cfg.run_dir == "runs/x" and cfg.iterate.steps == 3
    apply_overrides(cfg, ["iterate.steps=null"])
    assert cfg.iterate.steps is None


@pytest.mark.parametrize("item, match", [
    ("train.lrr=1", "unknown key 'train.lrr'"),
    ("trian.lr=1", "unknown key 'trian.lr'"),
    ("iterate.k=many", "iterate.k must be an integer"),
    ("iterate.k=1.5", "iterate.k must be an integer"),
    ("log.wandb=yes please", "log.wandb must be true or false"),
    ("temperature.grid=0.5", "temperature.grid must be a list"),
    ("temperature.grid=[0.5, hot]", r"temperature.grid\[1\] must be a number"),
    ("iterate.steps=[1]", "iterate.steps"),
    ("train", "expected key=value"),
    ("model=tiny", "is a section"),
    ("train.lr.x=1", "is not a section"),
])
def test_bad_overrides_name_the_key(item, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(RunConfig(), [item])


@pytest.mark.parametrize("item, match", [
    ("iterate.select=best", "iterate.select must be one of"),
    ("iterate.interval=0", "iterate.interval"),
    ("train.mode=online", "train.mode"),
    ("temperature.criterion=entropy", "temperature.criterion"),
    ("monitor.k=1", "monitor.k"),
    ("warmup.hint=no placeholder", "warmup.hint"),
    ("pseudo.enabled=true", "data.unlabeled"),
])
def test_validation_names_the_key(item, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [item])


def test_no_prm_needs_another_temperature_criterion():
    with pytest.raises(ValueError, match="temperature.criterion"):
        load_config(None, ["prm.enabled=false"])
    cfg = load_config(None, ["prm.enabled=false", "temperature.criterion=pass_at_k"])
    assert not cfg.prm.enabled


def test_yaml_round_trip(tmp_path):
    cfg = load_config(None, ["train.lr=3e-4", "temperature.grid=[0.7, 1.1]", "train.betas=[0.8, 0.9]"])
    p = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(p)
    assert config_to_dict(again) == config_to_dict(cfg)
    assert again.train.betas == (0.8, 0.9)


def test_yaml_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: fast\n")
    with pytest.raises(ValueError, match=r"bad.yaml: config: train.lr must be a number"):
        load_config(bad)
    bad.write_text("trainer:\n  lr: 1\n")
    with pytest.raises(ValueError, match="unknown key 'trainer'"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config(bad)


@pytest.mark.parametrize("name", ["minicpm_v25", "phi35_vision", "internvl2_2b", "qwen2_vl_2b"])
def test_paper_configs(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.train.lr == 1e-6 and cfg.train.lr_schedule == "constant" and cfg.train.global_batch_size == 128
    assert cfg.train.mode == "continuous"
    assert cfg.iterate.k == 16 and cfg.iterate.interval == 0.25 and cfg.iterate.select == "topk"
    assert cfg.iterate.select_k == 2
    assert cfg.temperature.criterion == "reward_pass_at_2" and cfg.temperature.adapt_every == 2
    assert cfg.temperature.grid[0] == 0.3 and cfg.temperature.grid[-1] == 1.6 and len(cfg.temperature.grid) == 14
    assert cfg.monitor.n_val == 250 and not cfg.pseudo.enabled
    assert cfg.model.policy.startswith("/path/to/")


def test_demo_yaml_is_the_demo():
    from mstar_fast.demo.run import demo_config

    assert config_to_dict(load_config(CONFIGS / "demo.yaml")) == config_to_dict(demo_config())


def test_importing_the_config_is_cheap_and_points_no_arrow_back_up():
    """``import mstar_fast.config`` loads at most 3 package modules (the package, the config, the leaf
    constants): no recipe, train or torch-backed module comes with it."""
    import subprocess
    import sys

    code = "import sys, mstar_fast.config; print(sorted(m for m in sys.modules if m.startswith('mstar_fast')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = eval(out)
    assert len(loaded) <= 3, loaded
    assert "torch" not in subprocess.run([sys.executable, "-c", code.replace("'mstar_fast'", "'torch'")],
                                         capture_output=True, text=True, check=True).stdout.replace("[]", "")
