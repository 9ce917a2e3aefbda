"""The recipe end to end: ``mstar demo --quick`` (every stage, minimal budget, < 3 minutes on CPU), and
kill -9 + ``mstar run --resume`` against an uninterrupted run with the same seed: same final metrics, the
same samples, none duplicated or lost. The runs are subprocesses (the CLI as users run it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

METRICS = "metrics.jsonl"
REQUIRED = ("iteration", "step", "temperature", "val_greedy_acc", "val_pass_at_k", "val_reward_pass_at_2",
            "n_selected", "test_greedy_acc")
TIMING = {"elapsed", "seconds_monitor", "seconds_sample", "seconds_score", "seconds_train", "seconds_test"}
# Sample chunks of 4 prompts: iteration files are written in several appends, so the kill below can land
# between two of them (a partly written iteration).
# One thread in every run: the demo otherwise picks its thread count by a measurement at start, and two
# independent runs on a loaded machine could pick different counts (different rounding, different samples).
SMALL = ["rollout.chunk_prompts=4", "model.threads=1"]


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("MSTAR_FAST_BACKEND", None)
    return env


def mstar_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mstar_fast", *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _samples(run_dir: Path) -> dict[str, list[dict]]:
    return {p.name: [json.loads(line) for line in p.read_text().splitlines()]
            for p in sorted((run_dir / "samples").glob("*.jsonl"))}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, float]:
    run_dir = tmp_path_factory.mktemp("demo") / "quick"
    t0 = time.perf_counter()
    res = mstar_cli("demo", "--quick", "--out", str(run_dir), *SMALL)
    return run_dir, res, time.perf_counter() - t0


def test_demo_quick_end_to_end(quick_run):
    run_dir, res, seconds = quick_run
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    print(f"mstar demo --quick: {seconds:.0f} s")  # speed lives in benchmarks/, never in a timed unit test
    rows = _rows(run_dir)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for r in rows:
        for key in REQUIRED:
            assert key in r, f"metrics.jsonl line {r['iteration']} lacks {key}"
        for key in ("val_greedy_acc", "val_pass_at_k", "val_reward_pass_at_2"):
            assert 0.0 <= r[key] <= 1.0
    final = rows[-1]
    assert final["stage"] == "final" and "warmup_test_acc" in final and "base_test_acc" in final
    assert final["test_greedy_acc"] is not None and rows[1]["n_selected"] >= 0
    assert rows[2]["step"] >= rows[1]["step"] >= rows[0]["step"]
    for name in ("config.yaml", "stages.json", "samples/warmup.jsonl", "samples/iter-001.jsonl",
                 "samples/iter-002.jsonl", "prm/prm_config.json", "warmup/config.json", "base/config.json",
                 "checkpoints/iter-002/trainer_state.json"):
        assert (run_dir / name).exists(), name
    extra = json.loads((run_dir / "checkpoints/iter-002/trainer_state.json").read_text())["extra"]
    assert extra["iteration"] == 2 and extra["cursor"] == 2 * 24 and "temperature" in extra["temperature"]
    out = res.stdout
    assert "| + M-STaR" in out and "| + warm-up" in out and "| base" in out
    assert "Reward-Pass@2" in out and "Pass@K" in out  # the per-iteration summary
    # Seconds per stage: in every metrics line, in stages.json, in the summaries and the end-of-run table;
    # both files strict JSON (a NaN would be a bare token that strict readers refuse).
    strict = lambda text: json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))  # noqa: E731
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = strict(line)
        assert row["seconds_monitor"] > 0
        if row["iteration"] > 0:
            assert all(row[k] >= 0 for k in ("seconds_sample", "seconds_score", "seconds_train"))
    assert rows[-1]["seconds_test"] > 0 and rows[1]["seconds_test"] is None
    stages = strict((run_dir / "stages.json").read_text())
    assert stages["base"]["seconds"] > 0 and stages["warmup"]["seconds_sample"] > 0
    assert stages["prm"]["seconds_data"] > 0 and stages["prm"]["seconds_train"] > 0
    assert "time: sampling" in out and "PRM scoring" in out
    assert "time per stage (seconds, wall)" in out and "| iteration 2 |" in out and "| all |" in out


def assert_same_run(run_dir: Path, ref_dir: Path) -> None:
    """The resumed run in ``run_dir`` equals the uninterrupted one in ``ref_dir``: metrics of iterations 0-2 up
    to timings, and every sample file, with no sample written twice."""
    got, want = _rows(run_dir), _rows(ref_dir)
    assert [r["iteration"] for r in got] == [0, 1, 2]
    for g, w in zip(got, want):
        assert {k: v for k, v in g.items() if k not in TIMING} == {k: v for k, v in w.items() if k not in TIMING}
    s_got, s_want = _samples(run_dir), _samples(ref_dir)
    assert sorted(s_got) == sorted(s_want)
    key = lambda d: (d["prompt_id"], d["index"])  # noqa: E731
    for name in s_want:
        keys = [key(d) for d in s_got[name]]
        assert len(keys) == len(set(keys)), f"{name}: a sample written twice"
        assert sorted(s_got[name], key=key) == sorted(s_want[name], key=key), f"{name} differs"


def kill_when_written(proc: subprocess.Popen, target: Path, timeout: float, group: bool = False) -> None:
    """kill -9 ``proc`` (with ``group``, its whole process group) as soon as ``target`` holds a byte; fails if
    the run ends first. Waits for it either way."""
    kill = (lambda: os.killpg(proc.pid, signal.SIGKILL)) if group else (lambda: os.kill(proc.pid, signal.SIGKILL))
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if target.exists() and target.stat().st_size > 0:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before the kill point"
        kill()
    finally:
        if proc.poll() is None:
            kill()
        proc.wait()


def test_kill_and_resume_equals_uninterrupted(quick_run, tmp_path):
    ref_dir, ref, _ = quick_run
    assert ref.returncode == 0, ref.stderr[-3000:]
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mstar_fast", "demo", "--quick", "--out", str(run_dir), *SMALL],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Known point: iteration 2 has started writing its samples (after iteration 1's checkpoint).
    target = run_dir / "samples" / "iter-002.jsonl"
    kill_when_written(proc, target, timeout=240)
    n_before = len(target.read_text().splitlines())
    assert (run_dir / "checkpoints" / "iter-001").is_dir() and not (run_dir / "checkpoints" / "iter-002").exists()
    res = mstar_cli("run", "--resume", str(run_dir))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resumed from" in res.stdout

    assert_same_run(run_dir, ref_dir)
    assert n_before <= len(_samples(ref_dir)["iter-002.jsonl"])


def test_run_refuses_an_existing_run_dir(quick_run):
    run_dir, _, _ = quick_run
    res = mstar_cli("demo", "--quick", "--out", str(run_dir))
    assert res.returncode == 2 and "already holds" in res.stderr
    res = mstar_cli("run", "--resume", str(run_dir / "nowhere"))
    assert res.returncode == 2 and "no config.yaml" in res.stderr


def test_resuming_a_finished_run_says_it_is_complete(quick_run):
    run_dir, _, _ = quick_run
    before = (run_dir / "metrics.jsonl").read_text()
    res = mstar_cli("run", "--resume", str(run_dir))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "is complete: all 2 iterations are done" in res.stdout
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_stage_commands_then_resume_the_run(tmp_path):
    from mstar_fast.demo.run import QUICK

    run_dir = tmp_path / "staged"
    config = str(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
    args = [config, f"run_dir={run_dir}", *QUICK, "iterate.iterations=1"]
    res = mstar_cli("warmup", *args)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (run_dir / "warmup" / "config.json").is_file() and not (run_dir / "prm_data").exists()
    res = mstar_cli("prm-data", *args)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (run_dir / "prm_data" / "labels.jsonl").is_file() and not (run_dir / "prm").exists()
    # model.prm: the PRM starts from another model (here the base model) than the policy that labelled the steps.
    res = mstar_cli("prm-train", *args, f"model.prm={run_dir / 'base'}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (run_dir / "prm" / "prm_config.json").is_file() and not (run_dir / METRICS).exists()
    res = mstar_cli("run", "--resume", str(run_dir))  # the iterations, on the stages already there
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert [r["iteration"] for r in _rows(run_dir)] == [0, 1]
    assert "base model:" not in res.stdout and "warm-up:" not in res.stdout  # not redone
