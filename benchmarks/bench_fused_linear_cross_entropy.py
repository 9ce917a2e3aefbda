"""fused_linear_cross_entropy vs ``F.cross_entropy(hidden @ W.T, labels)``: forward + backward (gradients
for hidden and W), fp32 on CPU, N=4096 rows, H=1024, V in {32000, 151936}.

Peak memory: each case runs in a fresh subprocess. After the inputs exist (hidden, W, labels: resident
and written), the kernel's peak-RSS counter is reset (``/proc/self/clear_refs`` = 5) and one
forward + backward runs; ``peak_mb`` = VmHWM after it minus VmRSS before it, i.e. the most memory the
step held on top of its inputs (the W gradient included: both paths must produce it). Large CPU tensors
are mmapped and unmapped on free, so RSS follows the live tensors. Time: median wall time of
forward + backward over ``repeat`` runs after the measured one, in the same subprocess (process CPU
time too); fused and unfused subprocesses alternate so slow phases of a shared machine hit both.

    python benchmarks/bench_fused_linear_cross_entropy.py      # writes results/bench_fused_linear_cross_entropy.*
    pytest benchmarks/bench_fused_linear_cross_entropy.py      # pytest-benchmark timings (small with --benchmark-disable)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import write_results  # noqa: E402

from mstar_fast.ops import fused_linear_cross_entropy  # noqa: E402

NAME = "bench_fused_linear_cross_entropy"
N, H = 4096, 1024
VOCABS = (32000, 151936)


def make_case(impl: str, n: int, h: int, v: int, seed: int = 0):
    """(step function, inputs): one forward + backward of ``impl`` ("fused" | "unfused"), fp32."""
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=g) * 0.05).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.05).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=g)

    def step() -> float:
        hidden.grad = None
        weight.grad = None
        if impl == "fused":
            loss = fused_linear_cross_entropy(hidden, weight, labels)
        elif impl == "unfused":
            loss = F.cross_entropy(hidden @ weight.t(), labels)
        else:
            raise ValueError(impl)
        loss.backward()
        return loss.item()

    return step, (hidden, weight, labels)


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def worker(impl: str, v: int, repeat: int, n: int = N, h: int = H) -> dict:
    """Run in a fresh process: peak memory of one step, then timings."""
    step, _ = make_case(impl, n, h, v)
    rss_before = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    loss = step()  # also the warm-up of the timed runs
    peak = _status_bytes("VmHWM") - rss_before
    times, cpu = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"impl": impl, "V": v, "peak_mb": peak / 2**20, "times_s": times, "cpu_s": cpu, "loss": loss}


def _spawn(impl: str, v: int, repeat: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, str(v), str(repeat)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3000)
    return json.loads(out.stdout.strip().splitlines()[-1])


def matmul_gflops(v: int = 32000) -> float:
    """This machine's fp32 matmul rate now, on the benchmark's own forward shape."""
    a, b = torch.randn(N, H), torch.randn(H, v)
    torch.mm(a, b)
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        torch.mm(a, b)
        ts.append(time.perf_counter() - t0)
    return 2 * N * H * v / statistics.median(ts) / 1e9


def main(rounds: int = 2, repeat: int = 2) -> Path:
    rows = []
    gf = matmul_gflops()
    for v in VOCABS:
        runs: dict[str, list[dict]] = {"unfused": [], "fused": []}
        for r in range(rounds):
            for impl in ("unfused", "fused") if r % 2 == 0 else ("fused", "unfused"):
                runs[impl].append(_spawn(impl, v, repeat))
                print(f"V={v} {impl}: {runs[impl][-1]}", file=sys.stderr, flush=True)
        res = {}
        for impl, rs in runs.items():
            times = [t for r_ in rs for t in r_["times_s"]]
            cpu = [t for r_ in rs for t in r_["cpu_s"]]
            res[impl] = {"time": statistics.median(times), "cpu": statistics.median(cpu),
                         "peak": max(r_["peak_mb"] for r_ in rs), "loss": rs[0]["loss"]}
        u, f = res["unfused"], res["fused"]
        logits_mb = N * v * 4 / 2**20
        rows.append({"V": v, "unfused_s": u["time"], "fused_s": f["time"], "time_ratio": f["time"] / u["time"],
                     "unfused_cpu_s": u["cpu"], "fused_cpu_s": f["cpu"], "cpu_ratio": f["cpu"] / u["cpu"],
                     "unfused_peak_mb": u["peak"], "fused_peak_mb": f["peak"], "mem_ratio": f["peak"] / u["peak"],
                     "logits_mb": logits_mb, "loss_diff": abs(u["loss"] - f["loss"])})
    notes = (
        f"N={N}, H={H}, fp32, forward + backward (grads of hidden and W), {torch.get_num_threads()} torch threads. "
        "peak_mb: VmHWM - VmRSS around one step in a fresh process (reset via /proc/self/clear_refs), i.e. "
        "memory held on top of the inputs, the W gradient included. Times: median over "
        f"{rounds} alternating subprocess rounds x {repeat} runs (after a first run that measures memory); "
        "*_cpu_s: process CPU time of the same runs (less sensitive to other jobs on the shared 2 cores, "
        f"but it counts OpenMP spin-waiting). fp32 matmul rate in this run: {gf:.0f} GFLOP/s. "
        "Targets: mem_ratio <= 0.25 at V=151936, time_ratio <= 1.3."
    )
    return write_results(NAME, rows, notes=notes)


# ----------------------------------------------------------------------------- pytest-benchmark
@pytest.mark.parametrize("v", VOCABS)
@pytest.mark.parametrize("impl", ["unfused", "fused"])
def test_fused_linear_cross_entropy(benchmark, impl, v):
    """Full size when benchmarking; a small smoke case under --benchmark-disable (CI)."""
    full = not benchmark.disabled
    n, h, vv = (N, H, v) if full else (256, 64, v // 100)
    step, (hidden, weight, labels) = make_case(impl, n, h, vv)
    loss = benchmark.pedantic(step, rounds=3 if full else 1, warmup_rounds=1 if full else 0)
    ref = F.cross_entropy((hidden @ weight.t()).detach(), labels).item()
    assert abs(loss - ref) < 1e-4 * max(1.0, abs(ref))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    else:
        print(main())
