"""The run directory and what a run reports: files (``config.yaml``, ``stages.json``, ``metrics.jsonl``, saved
models, checkpoints), the console (rank 0) and scalar loggers (TensorBoard, W&B).

Layout of ``RUN_DIR``::

    config.yaml          the resolved config (``mstar run --resume RUN_DIR`` reads it back)
    stages.json          one summary per finished stage (base, warmup, prm)
    metrics.jsonl        one line per iteration (0 = the warm-up policy before any self-evolving step)
    base/ warmup/ prm/   models, each saved atomically (a temporary directory, then one rename)
    samples/ prm_data/   append-only sample files (resumable)
    checkpoints/iter-NNN the newest ``log.keep_checkpoints`` iteration checkpoints

Only rank 0 writes; every method that writes is a no-op on the other ranks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import PreTrainedModel

from mstar_fast.config import LogConfig, RunConfig, config_to_dict, load_config, save_config
from mstar_fast.data.jsonl import JsonlWriter, iter_jsonl
from mstar_fast.errors import UserError
from mstar_fast.run_lock import LOCK_FILE, lock_run_dir
from mstar_fast.train import SFTEngine, StepInfo
from mstar_fast.train.distributed import World, full_model_state_dict, has_sharded_parameters

__all__ = ["CONFIG_FILE", "METRICS_FILE", "STAGES_FILE", "Console", "Loggers", "RunDir", "read_metrics",
           "save_model_dir", "strict_json", "time_table"]

log = logging.getLogger("mstar_fast")

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
STAGES_FILE = "stages.json"
MODEL_FILES = ("config.json", "model.safetensors", "generation_config.json", "model.safetensors.index.json")
# Config keys a later command on the same run directory may change: where it logs, and on what it runs.
_FREE = ("run_dir", "log.", "model.device", "model.threads", "model.attn_implementation")
_PRM_DATA_KEYS = ("prm.n_prompts", "prm.samples", "prm.temperature", "prm.m", "prm.soft")


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) replaced by None, in nested dicts / lists / tuples, so
    it serialises as strict JSON (``json.dumps(..., allow_nan=False)``; a bare ``NaN`` is no JSON and breaks
    readers such as ``jq`` or JavaScript's ``JSON.parse``). Other values are returned unchanged."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def _dumps(obj: Any, **kw: Any) -> str:
    return json.dumps(strict_json(obj), allow_nan=False, **kw)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def save_model_dir(model: PreTrainedModel, source_dir: str | os.PathLike, out_dir: Path,
                   state_dict: dict[str, Any] | None = None) -> Path:
    """Save ``model`` (``save_pretrained``; with ``state_dict``: those weights) plus the processor files of
    ``source_dir`` (tokenizer, image processor, chat template) to ``out_dir`` atomically: a temporary
    directory, then one rename."""
    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, state_dict=state_dict)
    src = Path(source_dir)
    if src.is_dir():
        for f in src.iterdir():
            if f.is_file() and f.name not in MODEL_FILES and not f.name.endswith(".safetensors"):
                shutil.copy2(f, tmp / f.name)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of ``RUN_DIR/metrics.jsonl``."""
    return list(iter_jsonl(Path(run_dir) / METRICS_FILE))


class RunDir:
    """One run's directory, as seen from one process of ``world``."""

    def __init__(self, path: str | os.PathLike, world: World) -> None:
        self.path = Path(path)
        self.world = world

    def locked(self) -> AbstractContextManager[object]:
        """The run directory's exclusive lock (:func:`mstar_fast.run_lock.lock_run_dir`) on the main process,
        for as long as a command writes it: a second writer fails at once with the holder's pid."""
        return lock_run_dir(self.path) if self.world.is_main else nullcontext()

    # ------------------------------------------------------------------ the config
    def claim(self, cfg: RunConfig, *, resume: bool, stop_after: str | None) -> None:
        """Make the directory this run's and save ``cfg`` as its ``config.yaml``.

        Raises:
            UserError: the directory holds a run already and this is a new ``mstar run`` (use
                ``--resume``); or a stage command (``stop_after``) whose config differs from the saved one
                in a setting of a stage already done or of the run as a whole (a different run).
        """
        if self.world.is_main:
            saved = self.path / CONFIG_FILE
            # A directory holding only its config (a command that stopped at a config, data or model error
            # before writing anything) is no run yet: the corrected command may take it over.
            if saved.exists() and not any(p.name not in (CONFIG_FILE, LOCK_FILE) for p in self.path.iterdir()):
                saved.unlink()
            if saved.exists() and not resume and stop_after is None:
                raise UserError(f"{self.path} already holds a run; resume it with `mstar run --resume {self.path}` "
                                "or pick another run_dir")
            if saved.exists() and stop_after is not None:
                self._check_same_run(load_config(saved), cfg)
            self.path.mkdir(parents=True, exist_ok=True)
            save_config(cfg, saved)
        self.world.barrier()

    def _frozen(self, key: str) -> bool:
        """Whether ``key`` may no longer change: run-wide settings always, a stage's once its output exists."""
        if key.startswith(_FREE):
            return False
        if key in _PRM_DATA_KEYS:  # what the Monte-Carlo labels were made with
            return (self.path / "prm_data").exists()
        if key == "model.prm" or key.startswith("prm."):  # what the PRM was trained from and with
            return (self.path / "prm").exists()
        if key.startswith("warmup."):
            return self.model_complete("warmup")
        if key.startswith(("iterate.", "temperature.", "monitor.", "train.", "pseudo.")):
            return (self.path / "checkpoints").exists()
        return True  # seed, data, model, rollout: every stage depends on them

    def _check_same_run(self, saved: RunConfig, cfg: RunConfig) -> None:
        old, new = _flat(config_to_dict(saved)), _flat(config_to_dict(cfg))
        for key in new:
            if old.get(key) != new[key] and self._frozen(key):
                raise UserError(f"{self.path} holds a different run: its config.yaml has {key}={old.get(key)!r}, "
                                f"this one {new[key]!r}; use another run_dir, or continue that run with "
                                f"`mstar run --resume {self.path}`")

    # ------------------------------------------------------------------ stages and models
    def stages(self) -> dict[str, Any]:
        """``stages.json``: one summary per finished stage."""
        p = self.path / STAGES_FILE
        return json.loads(p.read_text()) if p.is_file() else {}

    def write_stage(self, name: str, info: dict[str, Any]) -> None:
        if self.world.is_main:
            stages = self.stages()
            stages[name] = info
            _atomic_text(self.path / STAGES_FILE, _dumps(stages, indent=1) + "\n")

    def model_complete(self, name: str) -> bool:
        d = self.path / name
        return (d / "config.json").is_file() and any(d.glob("*.safetensors"))

    def save_model(self, model: PreTrainedModel, source_dir: str | os.PathLike, name: str) -> Path:
        """``RUN_DIR/name`` written by rank 0 (:func:`save_model_dir`). Collective when ``model`` is sharded
        by FSDP2 (call on every rank): its full weights are gathered on rank 0 first."""
        out = self.path / name
        state = full_model_state_dict(model) if has_sharded_parameters(model) else None
        if self.world.is_main:
            save_model_dir(model, source_dir, out, state_dict=state)
        return out

    # ------------------------------------------------------------------ metrics
    def append_metrics(self, row: dict[str, Any]) -> None:
        if self.world.is_main:
            with JsonlWriter(self.path / METRICS_FILE) as w:
                w.write(strict_json(row))

    def truncate_metrics(self, last_iteration: int) -> None:
        """Drop metrics lines after the checkpointed iteration (written before a kill that came before the
        checkpoint), so a resumed run writes each iteration's line exactly once."""
        p = self.path / METRICS_FILE
        if not self.world.is_main or not p.is_file():
            return
        rows = [r for r in iter_jsonl(p, errors="skip") if int(r.get("iteration", -1)) <= last_iteration]
        _atomic_text(p, "".join(_dumps(r) + "\n" for r in rows))

    def metrics(self) -> list[dict[str, Any]]:
        """Every rank gets rank 0's metrics rows."""
        return self.world.broadcast(read_metrics(self.path) if self.world.is_main else [])

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def prune_checkpoints(self, keep: int) -> None:
        """Keep the newest ``keep`` iteration checkpoints."""
        if self.world.is_main:
            old = sorted(p for p in self.checkpoints.iterdir() if p.name.startswith("iter-"))
            for p in old[:-keep]:
                shutil.rmtree(p, ignore_errors=True)


#: Called by the trainer after every optimizer step.
OnStep = Callable[[SFTEngine, StepInfo], None]


class Console:
    """What rank 0 prints: stage summaries and training progress bars."""

    def __init__(self, world: World, progress: bool) -> None:
        self.world = world
        self.progress = progress

    def say(self, text: str) -> None:
        if self.world.is_main:
            print(text, flush=True)

    def train_bar(self, total: int, desc: str) -> tuple[Callable[[], None], OnStep | None]:
        """A tqdm bar over optimizer steps, opened at the first step (so it does not sit above a sampling
        bar). Returns ``(close, on_step)``; ``on_step`` is None when no bar is shown."""
        if not self.progress or not self.world.is_main or total <= 0:
            return lambda: None, None
        box: list[Any] = []

        def on_step(engine: SFTEngine, info: StepInfo) -> None:
            if not box:
                box.append(tqdm(total=info.call_steps, desc=desc, unit="step", leave=False))
            box[0].update(1)
            box[0].set_postfix(loss=f"{info.loss:.3f}")

        return lambda: box[0].close() if box else None, on_step


class Loggers:
    """TensorBoard (when installed and enabled) and W&B (when enabled) scalars, rank 0 only."""

    def __init__(self, log: LogConfig, cfg: RunConfig, run: RunDir) -> None:
        self.tb = self.wandb = None
        if not run.world.is_main:
            return
        if log.tensorboard:
            try:  # optional dependency: tensorboard
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run.path / "tensorboard"))
            except ImportError:
                log.info("mstar_fast: tensorboard is not installed; scalars go to metrics.jsonl only")
        if log.wandb:
            try:  # optional dependency: wandb
                import wandb
            except ImportError as e:
                raise UserError("log.wandb is true but wandb is not installed (pip install wandb)") from e
            self.wandb = wandb.init(project=log.wandb_project, dir=str(run.path), name=run.path.name,
                                    config=config_to_dict(cfg), resume="allow")

    def log(self, row: dict[str, Any]) -> None:
        step = int(row.get("iteration", 0))
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(float(v))}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


#: Columns of :func:`time_table`: metrics.jsonl key suffix -> column title.
_TIME_COLUMNS = {"sample": "sampling", "score": "PRM scoring", "train": "training", "monitor": "monitor",
                 "test": "test eval"}


def _stage_time_rows(stages: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """(label, column -> seconds) of the stages before the iterations, from ``stages.json``."""
    out: list[tuple[str, dict[str, float]]] = []
    base = stages.get("base", {})
    if base:
        out.append(("base model", {"train": base.get("seconds"), "other": base.get("seconds_build")}))
    w = stages.get("warmup", {})
    if w:
        test = [w.get("seconds_test_base"), w.get("seconds_test")]
        out.append(("warm-up", {"sample": w.get("seconds_sample"), "train": w.get("seconds_train"),
                                "test": sum(v for v in test if v is not None) if any(v is not None for v in test)
                                else None, "total": w.get("seconds")}))
    p = stages.get("prm", {})
    if p:
        out.append(("PRM (labels, training)", {"sample": p.get("seconds_data"), "train": p.get("seconds_train")}))
    return out


def time_table(stages: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The end-of-run table of seconds per stage: one line per stage before the iterations (``stages.json``:
    base model, warm-up, PRM) and per iteration (``metrics.jsonl``'s ``seconds_*``), columns sampling / PRM
    scoring / training / monitor / test eval / total, and a last line with the sums. Seconds are wall
    time (``time.perf_counter``); a stage that did not run in this process (resumed) shows what its record
    holds, a cell with nothing measured shows "-"."""
    lines: list[tuple[str, dict[str, float | None]]] = _stage_time_rows(stages)
    for r in rows:
        if "iteration" in r:
            lines.append((f"iteration {r['iteration']}", {c: r.get(f"seconds_{c}") for c in _TIME_COLUMNS}))
    cols = list(_TIME_COLUMNS)
    sums = dict.fromkeys([*cols, "total"], 0.0)
    fmt = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    out = ["time per stage (seconds, wall)", "| stage | " + " | ".join(_TIME_COLUMNS.values()) + " | total |",
           "|---|" + "---:|" * (len(cols) + 1)]
    for label, sec in lines:
        parts = [sec.get(c) for c in cols]
        total = sec.get("total")
        if total is None:
            total = sum(v for v in [*parts, sec.get("other")] if v is not None)
        for c, v in zip(cols, parts):
            sums[c] += v or 0.0
        sums["total"] += total
        out.append(f"| {label} | " + " | ".join(fmt(v) for v in parts) + f" | {fmt(total)} |")
    out.append("| all | " + " | ".join(fmt(sums[c]) for c in cols) + f" | {fmt(sums['total'])} |")
    return "\n".join(out)
