"""The CPU-side parts of the GPU suite (benchmarks/gpu/): run.sh's argument handling, bench.py's argument
parsing, floor arithmetic and result files, and its whole body at toy sizes on the CPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
RUN_SH = ROOT / "benchmarks" / "gpu" / "run.sh"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu" / "bench.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_bench"] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("gpu_bench", None)


def test_defaults_cover_the_issue_grid(bench, tmp_path):
    cfg = bench.parse_args([str(tmp_path)])
    assert cfg.out == tmp_path and cfg.device == torch.device("cuda")
    assert min(cfg.batch) == 1 and max(cfg.batch) == 1024
    assert cfg.vocab == (92553, 151936, 262144)
    assert set(cfg.dtypes) == {"float32", "bfloat16"}
    assert set(cfg.backends) == {"cuda", "triton", "torch"}
    assert set(bench.MIXES) == {"temperature", "top_k50+top_p0.9"}
    assert bench.MIXES["top_k50+top_p0.9"] == dict(temperature=1.0, top_k=50, top_p=0.9)


def test_parse_args_lists_and_tiny(bench, tmp_path):
    cfg = bench.parse_args([str(tmp_path), "--batch", "1,8", "--vocab", "300", "--dtypes", "bfloat16",
                            "--backends", "cpp,torch", "--sections", "sampler", "--device", "cpu", "--repeat", "3"])
    assert (cfg.batch, cfg.vocab, cfg.dtypes, cfg.backends, cfg.sections) == (
        (1, 8), (300,), ("bfloat16",), ("cpp", "torch"), ("sampler",))
    assert cfg.device == torch.device("cpu") and cfg.repeat == 3
    tiny = bench.parse_args([str(tmp_path), "--tiny"])
    assert max(tiny.vocab) <= 1000 and max(tiny.batch) <= 4


@pytest.mark.parametrize("argv", [
    [],  # no output folder
    ["--batch", "0"],
    ["--batch", "a,b"],
    ["--dtypes", "float64"],
    ["--backends", "numpy"],
    ["--sections", "all"],
    ["--repeat", "0"],
    ["--budget-s", "-1"],
    ["--device", "nonsense"],
])
def test_parse_args_rejects_bad_input(bench, tmp_path, argv, capsys):
    args = argv if not argv else [str(tmp_path)] + argv
    with pytest.raises(SystemExit) as e:
        bench.parse_args(args)
    assert e.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_one_read_floor(bench):
    # 1024 rows x 151936 bf16 logits at 4 TB/s: 311 MB read once = 77.8 us.
    assert bench.one_read_floor_s(1024, 151936, 2, 4e12) == pytest.approx(1024 * 151936 * 2 / 4e12)
    assert bench.one_read_floor_s(1, 92553, 4, 1e9) == pytest.approx(92553 * 4 / 1e9)
    assert bench.one_read_floor_s(0, 10, 4, 1e9) == 0.0
    for bad in [(1, 1, 4, 0.0), (-1, 1, 4, 1.0), (1, 1, 0, 1.0)]:
        with pytest.raises(ValueError):
            bench.one_read_floor_s(*bad)


def test_copy_bandwidth_is_positive_and_plausible(bench):
    bw = bench.copy_bandwidth(torch.device("cpu"), 8 << 20, repeat=3)
    assert 1e8 < bw < 1e13  # between 0.1 GB/s and 10 TB/s on any CPU


def test_write_results_json_and_markdown(bench, tmp_path):
    meta = {"device_name": "Test GPU 9000", "copy_bandwidth_GBps": 123.4}
    rows = [
        dict(op="sample_from_logits", backend="cuda", B=1, V=10, median_us=5.0, x_floor=1.25, status="ok"),
        dict(op="sample_from_logits", backend="triton", B=1, V=10, status="skipped: no triton"),
        dict(op="fused_linear_cross_entropy", impl="liger", N=4, status="skipped: liger_kernel is not importable"),
    ]
    jpath, mpath = bench.write_results(tmp_path / "out", meta, rows)
    data = json.loads(jpath.read_text())
    assert data["meta"]["device_name"] == "Test GPU 9000" and data["rows"] == rows
    md = mpath.read_text()
    assert md.startswith("# GPU benchmark: Test GPU 9000")
    assert "## sample_from_logits" in md and "## fused_linear_cross_entropy" in md
    assert "| cuda | 1 | 10 | 5 | 1.25 | ok |" in md
    assert "skipped: no triton" in md


def test_main_runs_every_section_on_the_cpu_at_toy_sizes(bench, tmp_path):
    """The benchmark body itself (timing, floors, FLCE memory/time rows) at toy sizes on the CPU: cpp and
    torch backends, a cuda backend row that is skipped with its reason."""
    out = tmp_path / "res"
    rc = bench.main([str(out), "--tiny", "--device", "cpu", "--backends", "cpp,torch,cuda", "--repeat", "2",
                     "--dtypes", "float32"])
    assert rc == 0
    data = json.loads((out / "bench.json").read_text())
    assert data["meta"]["device_name"].startswith("cpu") and data["meta"]["copy_bandwidth_GBps"] > 0
    rows = data["rows"]
    sampler = [r for r in rows if r["op"] == "sample_from_logits"]
    # 2 batch sizes x 2 vocabularies x 1 dtype x 2 mixes x 3 backends
    assert len(sampler) == 2 * 2 * 2 * 3
    ok = [r for r in sampler if r["status"] == "ok"]
    assert {r["backend"] for r in ok} >= {"torch"}
    for r in ok:
        assert r["median_us"] > 0 and r["floor_us"] > 0
        assert r["x_floor"] == pytest.approx(r["median_us"] / r["floor_us"])
    assert all(r["status"].startswith("skipped: the cuda backend") for r in sampler if r["backend"] == "cuda")
    prm = [r for r in rows if r["op"] == "prm_step_scores" and r["status"] == "ok"]
    assert prm and all(r["median_us"] > 0 for r in prm)
    flce = {r["impl"]: r for r in rows if r["op"] == "fused_linear_cross_entropy"}
    assert flce["mstar_fast"]["status"] == "ok" and flce["unfused"]["status"] == "ok"
    assert flce["liger"]["status"].startswith("skipped")  # Liger is CUDA-only
    assert "sample_from_logits" in (out / "bench.md").read_text()


def test_budget_skips_cases_and_says_so(bench, tmp_path):
    cfg = bench.parse_args([str(tmp_path), "--tiny", "--device", "cpu", "--backends", "torch", "--budget-s", "1e-9"])
    rows = bench.bench_sampler(cfg, 1e10)
    assert rows and all(r["status"] == "skipped: time budget spent" for r in rows)


@pytest.mark.parametrize("argv,msg", [
    ([], "usage"),
    (["out", "--budget-s", "abc"], "whole number"),
    (["out", "--budget-s", "10"], "at least 60"),
    (["out", "--frobnicate"], "unknown option"),
    (["a", "b"], "one OUT_DIR"),
])
def test_run_sh_rejects_bad_arguments(argv, msg, tmp_path):
    r = subprocess.run(["bash", str(RUN_SH), *argv], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and msg in r.stderr
    assert not (tmp_path / "out").exists()  # nothing written before the arguments are valid


def test_run_sh_help():
    r = subprocess.run(["bash", str(RUN_SH), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "OUT_DIR" in r.stderr
