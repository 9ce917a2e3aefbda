"""GPU benchmark of the package's ops, run by ``benchmarks/gpu/run.sh`` (or directly:
``python benchmarks/gpu/bench.py OUT_DIR``).

- ``sample_from_logits`` on every backend the device has (cuda, triton, torch), B in 1..1024, V in
  {92553, 151936, 262144}, fp32 / bf16, two mixes (temperature only; top-k 50 + top-p 0.9), each
  against the one-read floor: bytes of the logits / the copy bandwidth measured in the same run
  (``x_floor = median / floor``; 1.0 would be a kernel that only reads the logits once).
- ``prm_step_scores`` per backend at the PRM scorer's shapes, against the floor of reading the S
  gathered rows and the two head rows.
- ``fused_linear_cross_entropy`` forward + backward: this package vs Liger-Kernel's FLCE (when
  ``liger_kernel`` imports) vs the unfused ``cross_entropy(hidden @ weight.T)``, time and peak memory.

Results go to ``OUT_DIR/bench.json`` and ``OUT_DIR/bench.md``, headed by the device name. A time budget
(``--budget-s``) bounds the run: cases left when it is spent are listed as skipped, not dropped
silently. ``--tiny`` runs every section at toy sizes (the CPU test of this script uses it).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

SAMPLER_B = (1, 4, 16, 64, 256, 1024)
SAMPLER_V = (92553, 151936, 262144)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MIXES: dict[str, dict] = {
    "temperature": dict(temperature=1.0),
    "top_k50+top_p0.9": dict(temperature=1.0, top_k=50, top_p=0.9),
}
SECTIONS = ("sampler", "prm", "flce")
TINY = dict(batch=(1, 3), vocab=(257, 1000), prm=((64, 32, 5),), flce=((64, 32, 300, 16),))
# (N hidden rows, H, S step tags) and (N tokens, H, V, chunk) at full size.
PRM_SHAPES = ((16384, 1536, 320), (16384, 4096, 320))
FLCE_SHAPES = ((8192, 2048, 151936, None), (16384, 4096, 151936, None))


@dataclass
class Config:
    """What one run measures (built by :func:`parse_args`)."""

    out: Path
    device: torch.device
    batch: tuple[int, ...]
    vocab: tuple[int, ...]
    dtypes: tuple[str, ...]
    backends: tuple[str, ...]
    sections: tuple[str, ...]
    repeat: int
    budget_s: float
    prm: tuple = PRM_SHAPES
    flce: tuple = FLCE_SHAPES
    started: float = field(default_factory=time.monotonic)

    def left_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _names(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        vals = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in vals if v not in allowed]
        if bad or not vals:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(allowed)}")
        return vals
    return parse


def parse_args(argv: list[str] | None = None) -> Config:
    """Command line -> :class:`Config`. Errors exit with status 2 and a usage line (argparse)."""
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="folder for bench.json / bench.md (created)")
    p.add_argument("--device", default="cuda", help="torch device (default: cuda)")
    p.add_argument("--batch", type=_ints, default=SAMPLER_B, help="sampler batch sizes, e.g. 1,64,1024")
    p.add_argument("--vocab", type=_ints, default=SAMPLER_V, help="sampler vocabulary sizes")
    p.add_argument("--dtypes", type=_names(tuple(DTYPES)), default=tuple(DTYPES))
    p.add_argument("--backends", type=_names(("cuda", "triton", "cpp", "torch")), default=("cuda", "triton", "torch"))
    p.add_argument("--sections", type=_names(SECTIONS), default=SECTIONS)
    p.add_argument("--repeat", type=int, default=10, help="timed calls per case (median reported)")
    p.add_argument("--budget-s", type=float, default=300.0, help="stop starting new cases after this many seconds")
    p.add_argument("--tiny", action="store_true", help="toy sizes (a smoke run; works on the CPU)")
    a = p.parse_args(argv)
    if a.repeat < 1:
        p.error(f"--repeat must be >= 1, got {a.repeat}")
    if a.budget_s <= 0:
        p.error(f"--budget-s must be > 0, got {a.budget_s}")
    try:
        device = torch.device(a.device)
    except RuntimeError as e:
        p.error(f"--device {a.device!r}: {e}")
    cfg = Config(out=a.out, device=device, batch=a.batch, vocab=a.vocab, dtypes=a.dtypes, backends=a.backends,
                 sections=a.sections, repeat=a.repeat, budget_s=a.budget_s)
    if a.tiny:
        cfg.batch, cfg.vocab, cfg.prm, cfg.flce = TINY["batch"], TINY["vocab"], TINY["prm"], TINY["flce"]
    return cfg


# --------------------------------------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_s(fn: Callable[[], object], device: torch.device, repeat: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()``: CUDA events on a GPU (device time, launch overhead included as the
    stream sees it), wall time on the CPU."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, nbytes: int, repeat: int = 10) -> float:
    """Bytes per second of ``dst.copy_(src)`` on ``device``, counting the read and the write
    (``2 * nbytes / time``): the practical ceiling of a kernel that streams memory."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = median_s(lambda: dst.copy_(src), device, repeat)
    return 2 * src.numel() * 4 / t


def one_read_floor_s(rows: int, cols: int, itemsize: int, bandwidth: float) -> float:
    """Seconds to read a ``[rows, cols]`` tensor of ``itemsize``-byte elements once at ``bandwidth``
    bytes/s: the least time any exact sampler over it can take.

    Raises:
        ValueError: a non-positive bandwidth or a negative size."""
    if bandwidth <= 0 or rows < 0 or cols < 0 or itemsize <= 0:
        raise ValueError(f"one_read_floor_s: bad arguments rows={rows} cols={cols} itemsize={itemsize} bw={bandwidth}")
    return rows * cols * itemsize / bandwidth


def _peak_bytes(device: torch.device, fn: Callable[[], object]) -> int | None:
    """Peak extra bytes allocated by ``fn()`` on a CUDA device (None on the CPU, where torch keeps no count)."""
    if device.type != "cuda":
        fn()
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


# ------------------------------------------------------------------------------------------------- cases


def _skip(cfg: Config, row: dict, why: str) -> dict:
    return dict(row, status=f"skipped: {why}")


def bench_sampler(cfg: Config, bandwidth: float) -> list[dict]:
    from mstar_fast.ops import sample_from_logits, use_backend
    from mstar_fast.ops._registry import backend_problem as problem

    rows = []
    gen = torch.Generator(device=cfg.device).manual_seed(0)  # inputs made on the device: no 1 GiB host copies
    for V in cfg.vocab:
        for dt in cfg.dtypes:
            for B in cfg.batch:
                logits = (torch.randn(B, V, generator=gen, device=cfg.device) * 3).to(DTYPES[dt])
                seeds = torch.arange(B, device=cfg.device)
                floor = one_read_floor_s(B, V, logits.element_size(), bandwidth)
                for mix, params in MIXES.items():
                    for backend in cfg.backends:
                        row = dict(op="sample_from_logits", backend=backend, B=B, V=V, dtype=dt, mix=mix,
                                   floor_us=floor * 1e6)
                        why = problem(backend, cfg.device)
                        if why:
                            rows.append(_skip(cfg, row, why))
                            continue
                        if cfg.left_s() <= 0:
                            rows.append(_skip(cfg, row, "time budget spent"))
                            continue

                        def call(backend=backend, params=params):
                            with use_backend(backend):
                                return sample_from_logits(logits, seed=seeds, offset=1, **params)

                        t = median_s(call, cfg.device, cfg.repeat)
                        rows.append(dict(row, median_us=t * 1e6, x_floor=t / floor, status="ok"))
    return rows


def bench_prm(cfg: Config, bandwidth: float) -> list[dict]:
    from mstar_fast.ops import prm_step_scores, use_backend
    from mstar_fast.ops._registry import backend_problem as problem

    rows = []
    gen = torch.Generator(device=cfg.device).manual_seed(1)
    for N, H, S in cfg.prm:
        for dt in cfg.dtypes:
            hidden = torch.randn(N, H, generator=gen, device=cfg.device).to(DTYPES[dt])
            weight = (torch.randn(2, H, generator=gen, device=cfg.device) * H**-0.5).to(DTYPES[dt])
            pos = torch.randperm(N, generator=gen, device=cfg.device)[:S].sort().values
            floor = one_read_floor_s(S + 2, H, hidden.element_size(), bandwidth)
            for backend in cfg.backends:
                row = dict(op="prm_step_scores", backend=backend, N=N, H=H, S=S, dtype=dt, floor_us=floor * 1e6)
                why = problem(backend, cfg.device)
                if why or cfg.left_s() <= 0:
                    rows.append(_skip(cfg, row, why or "time budget spent"))
                    continue

                def call(backend=backend):
                    with use_backend(backend):
                        return prm_step_scores(hidden, pos, weight)

                t = median_s(call, cfg.device, cfg.repeat)
                rows.append(dict(row, median_us=t * 1e6, x_floor=t / floor, status="ok"))
    return rows


def _liger_flce() -> Callable | None:
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        return None
    return liger_fused_linear_cross_entropy


def bench_flce(cfg: Config) -> list[dict]:
    """Forward + backward of mean cross-entropy over ``hidden @ weight.T``: time and peak extra memory."""
    import torch.nn.functional as F

    from mstar_fast.ops import fused_linear_cross_entropy

    liger = _liger_flce() if cfg.device.type == "cuda" else None
    rows = []
    gen = torch.Generator(device=cfg.device).manual_seed(2)
    for N, H, V, chunk in cfg.flce:
        for dt in cfg.dtypes:
            dtype = DTYPES[dt]
            hidden = torch.randn(N, H, generator=gen, device=cfg.device).to(dtype).requires_grad_()
            weight = (torch.randn(V, H, generator=gen, device=cfg.device) * H**-0.5).to(dtype).requires_grad_()
            labels = torch.randint(0, V, (N,), generator=gen, device=cfg.device)
            impls: dict[str, Callable | None] = {
                "mstar_fast": lambda: fused_linear_cross_entropy(hidden, weight, labels, chunk_size=chunk),
                "liger": (lambda: liger(hidden, weight, labels)) if liger is not None else None,
                "unfused": lambda: F.cross_entropy((hidden @ weight.t()).float(), labels),
            }
            for name, fwd in impls.items():
                row = dict(op="fused_linear_cross_entropy", impl=name, N=N, H=H, V=V, dtype=dt)
                if fwd is None:
                    rows.append(_skip(cfg, row, "liger_kernel is not importable"))
                    continue
                if cfg.left_s() <= 0:
                    rows.append(_skip(cfg, row, "time budget spent"))
                    continue

                def step(fwd=fwd):
                    hidden.grad = weight.grad = None
                    out = fwd()
                    loss = out[0] if isinstance(out, tuple) else out
                    loss.backward()

                try:
                    peak = _peak_bytes(cfg.device, step)
                    t = median_s(step, cfg.device, max(1, cfg.repeat // 2), warmup=1)
                except torch.cuda.OutOfMemoryError as e:  # the unfused baseline at the largest size
                    rows.append(_skip(cfg, row, f"out of memory ({str(e).splitlines()[0]})"))
                    torch.cuda.empty_cache()
                    continue
                rows.append(dict(row, median_ms=t * 1e3, peak_mib=None if peak is None else peak / 2**20, status="ok"))
            hidden.grad = weight.grad = None
    return rows


# ------------------------------------------------------------------------------------------------ output


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def write_results(out: Path, meta: dict, rows: list[dict]) -> tuple[Path, Path]:
    """``out/bench.json`` (meta + rows) and ``out/bench.md`` (one table per op, the device first).
    Returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / "bench.json", out / "bench.md"
    jpath.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = [f"# GPU benchmark: {meta['device_name']}", ""]
    lines += [f"- {k}: {fmt(v)}" for k, v in meta.items()] + [""]
    for op in dict.fromkeys(r["op"] for r in rows):
        sub = [r for r in rows if r["op"] == op]
        cols = list(dict.fromkeys(k for r in sub for k in r if k != "op"))
        lines += [f"## {op}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in sub]
        lines.append("")
    mpath.write_text("\n".join(lines))
    return jpath, mpath


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    if cfg.device.type == "cuda" and not torch.cuda.is_available():
        print("bench.py: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    bw_bytes = (64 << 20) if cfg.device.type == "cpu" else (1 << 30)
    bandwidth = copy_bandwidth(cfg.device, bw_bytes)
    meta = {
        "device_name": device_name(cfg.device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "copy_bandwidth_GBps": bandwidth / 1e9,
        "floor": "bytes read once / copy bandwidth (2 x bytes / time of a device-to-device copy)",
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    rows: list[dict] = []
    if "sampler" in cfg.sections:
        rows += bench_sampler(cfg, bandwidth)
    if "prm" in cfg.sections:
        rows += bench_prm(cfg, bandwidth)
    if "flce" in cfg.sections:
        rows += bench_flce(cfg)
    meta["seconds"] = round(time.monotonic() - cfg.started, 1)
    jpath, mpath = write_results(cfg.out, meta, rows)
    print(f"bench.py: {sum(r['status'] == 'ok' for r in rows)} case(s) measured, "
          f"{sum(r['status'] != 'ok' for r in rows)} skipped; wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
