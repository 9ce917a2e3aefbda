"""Value ranges checked when the config loads: a bad number fails at once with its dotted key, the value
and the allowed range (not 40-60 s into a run), through the ``key=value`` overrides and YAML files alike;
every numeric field of the config has a range."""

from __future__ import annotations

import dataclasses
import math
import re
import typing

import pytest

from mstar_fast.config import RANGES, RunConfig, load_config


@pytest.mark.parametrize("item, message", [
    # the cases that used to fail only once a stage reached them
    ("rollout.top_p=0", "rollout.top_p must be a finite number in (0, 1], got 0.0"),
    ("rollout.top_p=1.5", "rollout.top_p must be a finite number in (0, 1], got 1.5"),
    ("rollout.top_p=nan", "rollout.top_p must be a finite number in (0, 1], got nan"),
    ("rollout.top_k=-1", "rollout.top_k must be an integer >= 0, got -1"),
    ("rollout.min_p=-0.1", "rollout.min_p must be a finite number in [0, 1], got -0.1"),
    ("rollout.min_p=1.01", "rollout.min_p must be a finite number in [0, 1], got 1.01"),
    ("rollout.max_new_tokens=0", "rollout.max_new_tokens must be an integer >= 1, got 0"),
    ("rollout.max_new_tokens=-5", "rollout.max_new_tokens must be an integer >= 1, got -5"),
    ("temperature.grid=[inf]", "temperature.grid[0] must be a finite number > 0, got inf"),
    ("temperature.grid=[.inf]", "temperature.grid[0] must be a finite number > 0, got inf"),
    ("temperature.grid=[0.5, nan]", "temperature.grid[1] must be a finite number > 0, got nan"),
    ("temperature.grid=[0.5, 0]", "temperature.grid[1] must be a finite number > 0, got 0.0"),
    ("temperature.grid=[]", "temperature.grid must be a non-empty list, each item a finite number > 0; got []"),
    ("temperature.grid=[0.5, 0.5]", "temperature.grid must not repeat a value, got [0.5, 0.5]"),
    ("train.lr=nan", "train.lr must be a finite number >= 0, got nan"),
    ("train.lr=.nan", "train.lr must be a finite number >= 0, got nan"),
    ("train.lr=-1e-5", "train.lr must be a finite number >= 0, got -1e-05"),
    ("train.lr=inf", "train.lr must be a finite number >= 0, got inf"),
    # a few more
    ("temperature.initial=0", "temperature.initial must be a finite number > 0, got 0.0"),
    ("temperature.adapt_every=0", "temperature.adapt_every must be an integer >= 1, got 0"),
    ("train.betas=[0.9, 1.0]", "train.betas[1] must be a finite number in [0, 1), got 1.0"),
    ("train.eps=0", "train.eps must be a finite number > 0, got 0.0"),
    ("train.micro_batch_size=0", "train.micro_batch_size must be an integer >= 1, got 0"),
    ("train.total_steps=0", "train.total_steps must be an integer >= 1 or null, got 0"),
    ("train.max_grad_norm=inf", "train.max_grad_norm must be a finite number or null, got inf"),
    ("warmup.lr=-1", "warmup.lr must be a finite number >= 0 or null, got -1.0"),
    ("warmup.temperature=-0.5", "warmup.temperature must be a finite number >= 0, got -0.5"),
    ("prm.temperature=nan", "prm.temperature must be a finite number >= 0, got nan"),
    ("prm.batch_size=0", "prm.batch_size must be an integer >= 1, got 0"),
    ("iterate.threshold=1.5", "iterate.threshold must be a finite number in [0, 1], got 1.5"),
    ("iterate.k=0", "iterate.k must be an integer >= 1, got 0"),
    ("monitor.max_new_tokens=0", "monitor.max_new_tokens must be an integer >= 1 or null, got 0"),
    ("pseudo.min_agreement=2", "pseudo.min_agreement must be a finite number in [0, 1], got 2.0"),
    ("data.n_val=-1", "data.n_val must be an integer >= 0, got -1"),
    ("data.synthetic_levels=[1, 0]", "data.synthetic_levels[1] must be an integer >= 1, got 0"),
    ("model.tiny.base_lr=0", "model.tiny.base_lr must be a finite number > 0, got 0.0"),
    ("model.threads=-2", "model.threads must be an integer >= 0, got -2"),
    ("log.keep_checkpoints=0", "log.keep_checkpoints must be an integer >= 1, got 0"),
    ("rollout.backend=vllmm", "rollout.backend must be one of ('hf', 'vllm'), got 'vllmm'"),
])
def test_bad_value_names_key_value_and_range(item, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(None, [item])


@pytest.mark.parametrize("item", ["rollout.top_p=1", "rollout.top_p=0.01", "rollout.top_k=0", "rollout.top_k=50",
                                  "rollout.min_p=0", "rollout.min_p=1", "rollout.max_new_tokens=1",
                                  "temperature.grid=[0.05, 2.5]", "train.lr=0", "train.max_grad_norm=null",
                                  "train.max_grad_norm=0", "warmup.temperature=0", "warmup.lr=null",
                                  "iterate.steps=null", "seed=-3", "train.total_steps=100"])
def test_edge_values_that_are_allowed(item):
    load_config(None, [item])


def test_yaml_file_values_are_checked_too(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("rollout:\n  top_p: 2.0\n")
    with pytest.raises(ValueError, match=re.escape("rollout.top_p must be a finite number in (0, 1], got 2.0")):
        load_config(f)
    f.write_text("temperature:\n  grid: [0.5, .inf]\n")
    with pytest.raises(ValueError, match=re.escape("temperature.grid[1]")):
        load_config(f)


def test_programmatic_configs_are_checked_by_validate():
    """Values set in Python skip the loader's type coercion: validate() still catches a bool or a float
    where an int belongs, and a NaN."""
    for section, name, value, message in [("rollout", "top_k", 1.5, "rollout.top_k must be an integer"),
                                          ("rollout", "max_new_tokens", True, "rollout.max_new_tokens must be"),
                                          ("train", "lr", math.nan, "train.lr must be a finite number"),
                                          ("iterate", "interval", "0.5", "iterate.interval must be")]:
        cfg = RunConfig()
        setattr(getattr(cfg, section), name, value)
        with pytest.raises(ValueError, match=re.escape(message)):
            cfg.validate()


def _numeric_fields(cls: type, prefix: str = "") -> list[str]:
    """Dotted keys of every int / float (or list / tuple / optional of them) field under ``cls``."""
    out = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out += _numeric_fields(tp, key + ".")
            continue
        leaves = set()
        stack = [tp]
        while stack:
            t = stack.pop()
            args = typing.get_args(t)
            if args:
                stack.extend(a for a in args if a is not Ellipsis)
            else:
                leaves.add(t)
        if leaves & {int, float}:
            out.append(key)
    return out


def test_every_numeric_field_has_a_range():
    fields = _numeric_fields(RunConfig)
    assert "rollout.top_p" in fields and "train.betas" in fields and "model.tiny.base_lr" in fields
    assert sorted(set(fields) - set(RANGES)) == []  # a new numeric field needs its range in RANGES
    assert sorted(set(RANGES) - set(fields)) == []  # and RANGES names no field that is gone


def test_defaults_and_shipped_configs_pass():
    RunConfig().validate()
    from pathlib import Path

    for f in sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml")):
        load_config(f)
