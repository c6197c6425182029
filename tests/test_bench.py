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
    comparison, bounds = done.stdout.split("What bounds the training sweeps' speed-up", 1)
    rows = [line for line in comparison.splitlines() if line.startswith("| 0")]
    assert [r.split("|")[1].strip() for r in rows] == ["05 gradient profiles", "05 training", "08 training"]
    assert all("max rel. diff." in r for r in rows)
    # The training sweeps' evaluations and kernels, each timed alone: a share of the sweep, a speed-up without
    # evaluation, a positive kernel time (a lower bound) and so a finite largest possible speed-up.
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in bounds.splitlines() if line.startswith("| 0")]
    assert [r[0] for r in rows] == ["05 training", "08 training"]
    for r in rows:
        assert r[3].endswith("%") and r[4].endswith("x") and float(r[5]) > 0
        assert float(r[6].rstrip("x")) > 0 and r[7].endswith("x")
