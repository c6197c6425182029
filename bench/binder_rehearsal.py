"""Rehearse Binder: a fresh environment from binder/, postBuild, every chapter executed, then run in JupyterLab.

    python bench/binder_rehearsal.py
    python bench/binder_rehearsal.py --local-index   # without PyTorch's CPU wheel index (unreachable
                                                     # here); pip's configured index must hold torch+cpu
    python bench/binder_rehearsal.py --env /tmp/binder-env    # keep the environment (reused if present)
    python bench/binder_rehearsal.py --ui-only 03_dynamical_system   # skip the headless runs; some chapters

Recreates what mybinder.org does as closely as one machine allows: a new
virtual environment with only binder/requirements.txt (CPU torch), then
binder/postBuild (installs the library), then

1. each chapter executed top to bottom in that environment on one thread, with
   its time and the kernel's peak resident memory (bench/bench_build.py);
2. the learner's view: that environment's JupyterLab (`jupyter lab`, as Binder
   starts it) on loopback, and in Debian's Chromium (Playwright, from the Python
   running this script) each chapter opened, Kernel > Restart Kernel and Run All
   Cells, saved; meanwhile, four times a second, the proportional set size of
   the server and all its kernels together (what Binder's memory cgroup
   charges; tools/learner_ui.py) and of the server alone.

Fails if a chapter errors, in either run, or exceeds Binder's 2 GB memory limit
(the kernel alone in run 1, server and kernel together in run 2). Binder's own
image build and its network cannot be reproduced here; the package index used
is whatever pip is configured with.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
BINDER_MB = 2048
RUN_SECONDS = 1800
sys.path.insert(0, str(ROOT / "tools"))
import learner_ui  # noqa: E402  (tools/ is not a package)

sys.path.pop(0)


def environment(venv: Path, local: bool, scratch: Path) -> dict[str, str]:
    """Create venv from binder/ alone and run postBuild, unless it exists; return the environment to run it with."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "MPLBACKEND")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(venv))
    if (venv / "bin" / "jupyter").exists():
        print(f"environment reused: {venv}", flush=True)
        return env
    requirements = ROOT / "binder" / "requirements.txt"
    if local:
        stripped = scratch / "requirements.txt"
        lines = requirements.read_text().splitlines()
        stripped.write_text("\n".join(line for line in lines if not line.startswith("--extra-index-url")) + "\n")
        requirements = stripped
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", "-r", requirements], check=True, env=env)
    subprocess.run(["bash", ROOT / "binder" / "postBuild"], cwd=ROOT, env=env, check=True)
    print(f"environment ready in {time.perf_counter() - start:.0f} s (binder/requirements.txt + postBuild)", flush=True)
    return env


def in_jupyterlab(env: dict[str, str], chapters: list[Path], scratch: Path) -> bool:
    """Run each chapter in the environment's JupyterLab from Chromium; print a table; True if all passed."""
    lab = learner_ui.Lab(scratch / "lab", jupyter=str(Path(env["VIRTUAL_ENV"]) / "bin" / "jupyter"), env=env)
    ok = True
    print("\n| chapter | time in JupyterLab (s) | peak memory, server + kernel (MB) | server alone (MB) | passed |"
          "\n|---|---:|---:|---:|---|", flush=True)
    try:
        lab.start()
        with sync_playwright() as p:
            browser = learner_ui.chromium(p)
            for source in chapters:
                nb = nbformat.read(source, as_version=4)
                for cell in nb.cells:
                    if cell.cell_type == "code":
                        cell.outputs, cell.execution_count = [], None
                nbformat.write(nb, lab.notebooks / source.name)
                peak = learner_ui.PeakMemory(lab)
                try:
                    walk = learner_ui.run_all(browser, lab, source.name, RUN_SECONDS, every_poll=peak)
                    wrong = learner_ui.problems(lab.notebooks / source.name) + walk.outside + walk.errors
                    seconds = f"{walk.seconds:.1f}"
                except Exception as err:  # reported in the table, and fails the run
                    wrong, seconds = [f"{type(err).__name__}: {err}"], "failed"
                passed = not wrong and peak.total < BINDER_MB
                ok &= passed
                print(f"| {source.stem} | {seconds} | {peak.total:.0f} | {peak.server:.0f} | {'yes' if passed else '**NO**'} |", flush=True)
                for line in wrong:
                    print(f"    {line}", flush=True)
            browser.close()
    finally:
        lab.stop()
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chapters", nargs="*", help="chapter names, e.g. 03_dynamical_system (default: all)")
    parser.add_argument("--local-index", action="store_true", help="drop binder/requirements.txt's --extra-index-url")
    parser.add_argument("--env", type=Path, help="where to build the environment; reused if it exists (default: a temporary folder)")
    parser.add_argument("--ui-only", action="store_true", help="skip the headless runs (bench/bench_build.py)")
    args = parser.parse_args()
    every = sorted((ROOT / "chapters").glob("*.ipynb"))
    chapters = [p for p in every if not args.chapters or p.stem in args.chapters]
    unknown = set(args.chapters) - {p.stem for p in every}
    if unknown:
        parser.error(f"chapters: no such chapter {sorted(unknown)}; allowed: {[p.stem for p in every]}")
    scratch = Path(tempfile.mkdtemp(prefix="vg-binder-"))
    try:
        env = environment((args.env or scratch / "env").resolve(), args.local_index, scratch)
        python = Path(env["VIRTUAL_ENV"]) / "bin" / "python"
        headless = 0
        if not args.ui_only:
            headless = subprocess.run(
                [python, ROOT / "bench" / "bench_build.py", "--chapters", "--max-seconds", "inf", "--max-mb", str(BINDER_MB),
                 *map(str, chapters)], cwd=ROOT, env=env,
            ).returncode
        ui = in_jupyterlab(env, chapters, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    passed = headless == 0 and ui
    print("Binder rehearsal:", "passed" if passed else f"FAILED (a chapter errored or exceeded {BINDER_MB} MB)")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
