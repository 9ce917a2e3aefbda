"""Shared benchmark harness: machine description (CPU model and instruction-set flags), a same-run memory-bandwidth probe, timing with
medians, and result files under benchmarks/results/ (<name>.json + <name>.md with the machine header).

Benchmarks run under pytest-benchmark (``pytest benchmarks/``); CI runs them with
``--benchmark-disable`` so each body executes once as a smoke test. Numbers are only comparable
within one run: quote medians and ratios measured side by side.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


# CPU flags that decide which matmul kernels run (fp32 GEMM speed differs several-fold between kinds).
_FLAG_PREFIXES = ("avx", "amx", "fma", "f16c", "sse4", "vnni")


def cpu_flags() -> list[str]:
    """The CPU's vector / matrix instruction-set flags from /proc/cpuinfo (``avx2``, ``avx512f``,
    ``amx_tile``, ``fma`` ...), sorted; empty where /proc/cpuinfo is absent."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return sorted(x for x in line.split(":", 1)[1].split() if x.startswith(_FLAG_PREFIXES))
    except OSError:
        pass
    return []


def cpu_kind(flags: list[str] | None = None) -> str:
    """``"avx512"`` when the CPU has AVX-512 (foundation), else ``"avx2"`` / ``"no-avx2"``: the property
    that sets fp32 GEMM speed on the machines this project runs on."""
    flags = cpu_flags() if flags is None else flags
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "no-avx2"


def machine_info() -> dict:
    """CPU / GPU model, its vector-instruction flags and kind (:func:`cpu_flags`, :func:`cpu_kind`), core
    count, torch and git versions, date."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=False).stdout.strip()
    except OSError:
        commit = ""
    flags = cpu_flags()
    return {
        "cpu": cpu,
        "cpu_kind": cpu_kind(flags),
        "cpu_flags": " ".join(flags),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": commit,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def median_time(fn: Callable[[], object], repeat: int = 7, warmup: int = 1, sync: bool = False) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def read_bandwidth_gbps(nbytes: int = 512 << 20, repeat: int = 7, device: str = "cpu") -> float:
    """This machine's memory read bandwidth now, in GB/s: a reduction over a buffer larger than the
    caches, with all torch threads (the same threads the kernels use)."""
    x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    t = median_time(lambda: x.sum(), repeat=repeat, sync=device != "cpu")
    return nbytes / t / 1e9


def write_results(name: str, rows: list[dict], notes: str = "", columns: list[str] | None = None) -> Path:
    """Write results/<name>.json and results/<name>.md (a table of ``rows`` under the machine header)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": info, "notes": notes, "rows": rows}, indent=1) + "\n")
    columns = columns or list(rows[0].keys()) if rows else []
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"# {name}", "", "Machine: " + ", ".join(f"{k}={v}" for k, v in info.items() if v is not None), ""]
    if notes:
        lines += [notes, ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path
