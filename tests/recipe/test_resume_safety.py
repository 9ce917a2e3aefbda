"""``mstar run --resume`` on a damaged or crafted run directory, end to end (the CLI as users run it): a
crafted checkpoint file is refused with one clear line and its code never runs; a damaged newest
checkpoint makes the run resume from the previous one (with a warning naming the file) and finish with
the same metrics as the undamaged run."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

from tests.recipe.test_loop import SMALL, TIMING, _rows, mstar_cli


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_resume_refuses_crafted_and_falls_back_past_damaged(tmp_path):
    run_dir = tmp_path / "run"
    res = mstar_cli("demo", "--quick", "--out", str(run_dir), *SMALL)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    want = _rows(run_dir)
    assert [r["iteration"] for r in want] == [0, 1, 2]
    newest = run_dir / "checkpoints" / "iter-002"
    assert (run_dir / "checkpoints" / "iter-001").is_dir() and newest.is_dir()

    # 1. A crafted scheduler.pt: refused (exit 2, one line naming the file), the payload never runs.
    marker = tmp_path / "pwned"
    good = (newest / "scheduler.pt").read_bytes()
    (newest / "scheduler.pt").write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    res = mstar_cli("run", "--resume", str(run_dir))
    assert res.returncode == 2, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"refusing {newest / 'scheduler.pt'}" in res.stderr and "Traceback" not in res.stderr
    assert not marker.exists()
    (newest / "scheduler.pt").write_bytes(good)

    # 2. A truncated optimizer.pt in the newest checkpoint: resume from iter-001, redo iteration 2.
    opt = newest / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:100])
    res = mstar_cli("run", "--resume", str(run_dir))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"{opt} is damaged" in res.stderr and "trying the previous checkpoint" in res.stderr
    assert f"resumed from {run_dir / 'checkpoints' / 'iter-001'}" in res.stdout
    got = _rows(run_dir)
    assert [r["iteration"] for r in got] == [0, 1, 2]
    for g, w in zip(got, want):
        assert {k: v for k, v in g.items() if k not in TIMING} == {k: v for k, v in w.items() if k not in TIMING}
    # iter-002 was written again, whole.
    assert json.loads((newest / "trainer_state.json").read_text())["extra"]["iteration"] == 2
    assert opt.stat().st_size > 100

    # 3. Every kept checkpoint damaged: one clear error, no traceback.
    for ckpt in ("iter-001", "iter-002"):
        (run_dir / "checkpoints" / ckpt / "trainer_state.json").write_text("{")
    res = mstar_cli("run", "--resume", str(run_dir))
    assert res.returncode == 2 and "no usable checkpoint" in res.stderr and "Traceback" not in res.stderr
    shutil.rmtree(run_dir)
