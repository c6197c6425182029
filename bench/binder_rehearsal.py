"""Rehearse Binder: a fresh environment from binder/, postBuild, then every chapter executed.

    python bench/binder_rehearsal.py
    python bench/binder_rehearsal.py --local-index   # without PyTorch's CPU wheel index (unreachable
                                                     # here); pip's configured index must hold torch+cpu

Recreates what mybinder.org does as closely as one machine allows: a new
virtual environment with only binder/requirements.txt (CPU torch), then
binder/postBuild (installs the library), then each chapter executed top to
bottom in that environment on one thread, with its time and peak resident
memory recorded. Fails if a chapter errors or exceeds Binder's 2 GB memory
limit. (Binder's own image build and its network cannot be reproduced here;
the package index used is whatever pip is configured with.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINDER_MB = 2048


def main() -> int:
    local = "--local-index" in sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="vg-binder-") as tmp:
        requirements = ROOT / "binder" / "requirements.txt"
        if local:
            stripped = Path(tmp) / "requirements.txt"
            lines = requirements.read_text().splitlines()
            stripped.write_text("\n".join(line for line in lines if not line.startswith("--extra-index-url")) + "\n")
            requirements = stripped
        venv = Path(tmp) / "env"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = venv / "bin" / "python"
        subprocess.run([python, "-m", "pip", "install", "--quiet", "-r", requirements], check=True)
        env = dict(os.environ, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", VIRTUAL_ENV=str(venv))
        subprocess.run(["bash", ROOT / "binder" / "postBuild"], cwd=ROOT, env=env, check=True)
        print(f"environment ready in {time.perf_counter() - start:.0f} s (binder/requirements.txt + postBuild)", flush=True)
        result = subprocess.run(
            [python, ROOT / "bench" / "bench_build.py", "--chapters", "--max-seconds", "inf", "--max-mb", str(BINDER_MB)],
            cwd=ROOT, env=env,
        )
        print("Binder rehearsal:", "passed" if result.returncode == 0 else f"FAILED (a chapter errored or exceeded {BINDER_MB} MB)")
        return result.returncode


if __name__ == "__main__":
    sys.exit(main())
