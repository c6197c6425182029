"""The sweep benchmark still runs and its two forms still agree (its timings are never asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_sweeps_quick_runs_and_the_forms_agree():
    # --quick runs each of the book's three sweeps on tiny sizes, loop and stacked; the script exits with an
    # error when the stacked results disagree with the loop's beyond float32 rounding.
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_sweeps.py"), "--quick", "--repeats", "1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 0")]
    assert [r.split("|")[1].strip() for r in rows] == ["05 gradient profiles", "05 training", "08 training"]
    assert all("max rel. diff." in r for r in rows)
    # Each row: both times positive and a speed-up that is their ratio, within the printed rounding
    # (times to 0.005 s, the speed-up to 0.05).
    for r in rows:
        cells = [c.strip() for c in r.split("|")[1:-1]]
        loop, stacked, speedup = float(cells[2]), float(cells[3]), float(cells[4].rstrip("x"))
        assert loop > 0 and stacked > 0
        assert (loop - 0.005) / (stacked + 0.005) - 0.05 <= speedup <= (loop + 0.005) / (stacked - 0.005) + 0.05
