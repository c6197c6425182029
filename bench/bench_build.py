"""Benchmark the book: each chapter's execution time and peak memory, and the whole build.

    python bench/bench_build.py              # chapters, then a clean build and a no-change rebuild
    python bench/bench_build.py --chapters   # chapters only
    python bench/bench_build.py chapters/05_activations.ipynb   # some chapters only

Each chapter runs in a fresh kernel limited to one CPU thread (as on Binder),
at the default `small` scale; its peak resident memory and the CPU time it used
are read inside the kernel at the end (getrusage). Budgets (the speed issue):
60 s of kernel CPU time (the wall time of an idle machine) and 1.5 GB per
chapter, 6 min for a clean build on 2 cores, 15 s for a rebuild with nothing
changed. Prints a markdown table for the README; exits 1 if a budget is exceeded.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
CHAPTER_SECONDS, CHAPTER_MB, BUILD_SECONDS, REBUILD_SECONDS = 60.0, 1536.0, 360.0, 15.0
# Read inside the kernel at the end: its peak resident memory (KiB on Linux) and the CPU seconds it used (user +
# system), which on a shared machine say more about the chapter's cost than the wall clock does.
PEAK = ("import resource; _u = resource.getrusage(resource.RUSAGE_SELF); "
        "print(_u.ru_maxrss, round(_u.ru_utime + _u.ru_stime, 2))")


def run_chapter(path: Path) -> tuple[float, float, float]:
    """Execute one notebook in a fresh one-thread kernel; return (wall seconds, kernel CPU seconds, peak MB)."""
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PEAK))
    env_before = dict(os.environ)
    os.environ.update(VANISHING_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                      VANISHING_QUIET="1")  # as the book runs it: no progress bars
    os.environ.pop("MPLBACKEND", None)
    try:
        client = NotebookClient(nb, timeout=1800, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        start = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - start
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    kb, cpu = "".join(o.get("text", "") for o in nb.cells[-1].outputs).split()
    return seconds, float(cpu), int(kb) / 1024


def build_times() -> tuple[float, float]:
    """Clean build (executing everything) and a rebuild with nothing changed, in a scratch copy."""
    work = Path(tempfile.mkdtemp(prefix="vg-bench-"))
    src = work / "book"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns("_build", ".git", ".venv", ".jupyter_cache"))
    cmd = [sys.executable, str(src / "tools" / "build.py")]
    times = []
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=src, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    shutil.rmtree(work)
    return times[0], times[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="chapters to run (default: all)")
    parser.add_argument("--chapters", action="store_true", help="skip the whole-book build timing")
    parser.add_argument("--max-seconds", type=float, default=CHAPTER_SECONDS, help="time budget per chapter")
    parser.add_argument("--max-mb", type=float, default=CHAPTER_MB, help="peak-memory budget per chapter")
    args = parser.parse_args()
    notebooks = [p.resolve() for p in args.notebooks] or sorted((ROOT / "chapters").glob("*.ipynb"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("\n| chapter | time (s) | kernel CPU (s) | peak memory (MB) | within budget |\n|---|---:|---:|---:|---|")
    over = False
    for path in notebooks:
        try:
            seconds, cpu, mb = run_chapter(path)
        except Exception as err:  # a failing chapter is reported, and fails the run
            print(f"| {path.name} | failed: {type(err).__name__} | | | **NO** |", flush=True)
            over = True
            continue
        # The time budget is judged on the kernel's CPU time: on one thread it is the wall time of an
        # otherwise idle machine, and a loaded machine does not inflate it.
        ok = cpu <= args.max_seconds and mb <= args.max_mb
        over |= not ok
        print(f"| {path.name} | {seconds:.1f} | {cpu:.1f} | {mb:.0f} | {'yes' if ok else '**NO**'} |", flush=True)
    if not (args.chapters or args.notebooks):
        clean, rebuild = build_times()
        over |= clean > BUILD_SECONDS or rebuild > REBUILD_SECONDS
        print(f"\n| build | time (s) | budget (s) |\n|---|---:|---:|\n| clean (execute + render) | {clean:.0f} | {BUILD_SECONDS:.0f} |"
              f"\n| rebuild, nothing changed | {rebuild:.1f} | {REBUILD_SECONDS:.0f} |")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
