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
    comparison, rest = done.stdout.split("The training sweeps' evaluations alone", 1)
    evaluation, kernels = rest.split("The training sweeps' kernels alone", 1)
    rows = [line for line in comparison.splitlines() if line.startswith("| 0")]
    assert [r.split("|")[1].strip() for r in rows] == ["05 gradient profiles", "05 training", "08 training"]
    assert all("max rel. diff." in r for r in rows)
    # The training sweeps' evaluations, timed alone in both forms: a share and a speed-up without them.
    rows = [line for line in evaluation.splitlines() if line.startswith("| 0")]
    assert [r.split("|")[1].strip() for r in rows] == ["05 training", "08 training"]
    assert all(r.rstrip(" |").endswith("x") and "%" in r for r in rows)
    # Their kernels alone, timed one by one: a lower bound, so the largest possible speed-up is a finite number.
    rows = [line for line in kernels.splitlines() if line.startswith("| 0")]
    assert [r.split("|")[1].strip() for r in rows] == ["05 training", "08 training"]
    assert all(float(r.split("|")[2]) > 0 for r in rows)
