"""Execute chapter notebooks in place, top to bottom, the way the book and nbval do.

    python tools/execute.py chapters/05_activations.ipynb [more.ipynb ...]

Runs each notebook in a fresh kernel from its own folder, without recording
per-cell timestamps (they would change on every run), under the book's pinned
CPU kernels (``vanishing.kernels``; ``tools/kernels.py`` runs it under another set), joins printed text that
the kernel happened to send in several chunks, and stops at the first error,
showing the failing cell. Store the result: outputs are the contract
that strict nbval re-checks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from vanishing import kernels
from vanishing.runtime import QUIET_ENV


def merge_streams(outputs: list) -> list:
    """Join consecutive chunks of the same stream: the kernel splits printed text arbitrarily."""
    merged: list = []
    for out in outputs:
        if out.output_type == "stream" and merged and merged[-1].output_type == "stream" and merged[-1].name == out.name:
            merged[-1].text += out.text
        else:
            merged.append(out)
    return merged


def execute(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    os.environ.pop("MPLBACKEND", None)
    kernels.pin()  # the kernel inherits the book's CPU kernel set
    os.environ[QUIET_ENV] = "1"  # and no progress bars: they must not enter the stored outputs
    client = NotebookClient(
        nb, timeout=900, kernel_name="python3", record_timing=False,
        resources={"metadata": {"path": str(path.parent.resolve())}},
    )
    client.execute()
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = merge_streams(cell.outputs)
    nb.metadata.setdefault("kernelspec", {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"})
    nbformat.write(nb, path)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        print(f"executing {arg}", flush=True)
        execute(Path(arg))
