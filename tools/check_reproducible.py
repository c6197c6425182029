"""Check that executing each chapter from a clean kernel gives byte-identical outputs.

    python tools/check_reproducible.py [--runs 3] [--kernels pinned another-cpu] [chapters/NN_name.ipynb ...]

Each chapter is executed ``--runs`` times, each in a fresh kernel, and every
output of every cell (text, LaTeX, HTML and the PNG bytes of figures) is compared
with the outputs stored in the repository, under each kernel set named
(``vanishing.kernels``: ``pinned``, the set the stored outputs come from;
``another-cpu``, what another x86 CPU changes under the pin; ``native``, this
machine's fastest kernels, which is expected to differ). Cells tagged
``nbval-ignore-output`` (machine-dependent, each with a comment saying why) are
skipped. Chapters run in parallel, one single-threaded kernel per core.
Exits 1 and names the differing cells of each chapter that is not reproducible.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from vanishing.kernels import KERNEL_SETS, environment

ROOT = Path(__file__).resolve().parent.parent


def outputs(nb) -> list[str]:
    """One canonical string per code cell: its outputs without execution counts."""
    result = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if "nbval-ignore-output" in cell.metadata.get("tags", []):
            result.append("<ignored>")
            continue
        outs = []
        for o in cell.outputs:
            o = {k: v for k, v in o.items() if k not in ("execution_count", "metadata")}
            if o.get("output_type") == "stream":
                if o.get("name") == "stderr":
                    continue
                # The kernel may split one print's text into chunks differently from run to run.
                if outs and outs[-1].get("output_type") == "stream" and outs[-1]["name"] == o["name"]:
                    outs[-1] = {**outs[-1], "text": outs[-1]["text"] + o["text"]}
                    continue
            outs.append(o)
        result.append(json.dumps(outs, sort_keys=True))
    return result


def check(path: str, runs: int, kernel_set: str) -> tuple[str, str, list[str]]:
    stored = nbformat.read(path, as_version=4)
    reference = outputs(stored)
    problems = []
    # This worker's kernels inherit its environment: the kernel set asked for.
    env = environment(kernel_set)
    env.pop("MPLBACKEND", None)
    os.environ.clear()
    os.environ.update(env)
    for run in range(1, runs + 1):
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(Path(path).parent)}}).execute()
        cells = [i + 1 for i, (a, b) in enumerate(zip(reference, outputs(nb), strict=True)) if a != b]
        if cells:
            problems.append(f"run {run}: code cell(s) {', '.join(map(str, cells))} differ from the stored outputs")
    return path, kernel_set, problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="chapters to check (default: all)")
    parser.add_argument("--runs", type=int, default=3, help="runs per chapter and kernel set")
    parser.add_argument("--kernels", nargs="+", choices=KERNEL_SETS, default=["pinned", "another-cpu"],
                        help="kernel sets to run each chapter under (default: pinned another-cpu)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    paths = args.notebooks or [str(p) for p in sorted((ROOT / "chapters").glob("*.ipynb"))]
    jobs = [(p, k) for k in args.kernels for p in paths]
    failed = False
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for path, kernel_set, problems in pool.map(check, [p for p, _ in jobs], [args.runs] * len(jobs), [k for _, k in jobs]):
            name = Path(path).name
            verdict = f"identical in all {args.runs} runs" if not problems else "; ".join(problems)
            print(f"{name} [{kernel_set}]: {verdict}", flush=True)
            failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
