"""Learners turn the knobs: each chapter's "try it" cell still runs with a non-default setting.

Convention (CONTRIBUTING.md): a chapter has one code cell tagged ``try-it``;
each knob in it is one line ``NAME = value  # try: other, another``. This test
sets every knob to its first alternative and requires that nothing raises.
Outputs are not compared.

Strict nbval already executes every chapter in full, in the same CI run, so this
test does not repeat the chapter's experiments. It runs a *slice* of the chapter:
the setup cell (the first code cell, whole), then only those top-level statements
of the cells before the try-it cell that the try-it cell depends on, directly or
through each other (see ``slice_cells`` in ``tools/cell_slice.py``), then the modified try-it cell. It proves
that the try-it cell runs with other settings on top of exactly what it depends on.
The slice keeps every statement in its cell and on its line, so a traceback points
at the chapter's own source.
"""

from __future__ import annotations

import ast
import math
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from cell_slice import slice_cells  # noqa: E402  # the slicer, shared with bench/runbook.py

while str(ROOT / "tools") in sys.path:  # tools/kernels.py must not shadow the `kernels` package
    sys.path.remove(str(ROOT / "tools"))

NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb"))
KNOB = re.compile(r"^(?P<indent>\s*)(?P<name>[A-Z][A-Z0-9_]*)\s*=\s*(?P<value>[^#]+?)\s*#\s*try:\s*(?P<alts>.+)$")

# Pages without experiments to vary.
NO_KNOBS = {"a1_checking_sources.ipynb"}


def knobs(source: str) -> tuple[str, dict[str, object]]:
    """Return the cell with each knob set to its first alternative, and the new settings."""
    lines, changed = [], {}
    for line in source.splitlines():
        m = KNOB.match(line)
        if m:
            alternatives = ast.literal_eval(f"[{m['alts']}]")
            changed[m["name"]] = alternatives[0]
            line = f"{m['indent']}{m['name']} = {alternatives[0]!r}"
        lines.append(line)
    return "\n".join(lines), changed


def try_it_slice(nb: nbformat.NotebookNode, name: str) -> tuple[list[nbformat.NotebookNode], dict[str, object]]:
    """The code cells to run for a chapter's try-it test (their sources sliced), and the knobs changed."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [i for i, c in enumerate(code) if "try-it" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: expected exactly one code cell tagged 'try-it', found {len(tagged)}"
    index = tagged[0]
    source, changed = knobs(code[index].source)
    assert changed, f"{name}: the try-it cell has no knob lines of the form `NAME = value  # try: other`"
    sources = [c.source for c in code[:index]] + [source]
    cells = []
    for i, sliced in slice_cells(sources, index):
        cell = nbformat.from_dict(dict(code[i]))
        cell.source, cell.outputs, cell.execution_count = sliced, [], None
        cells.append(cell)
    return cells, changed


def test_knob_parsing():
    cell, changed = knobs('DEPTH = 20  # try: 10, 50\nACT = "relu"  # try: "tanh"\nx = DEPTH')
    assert changed == {"DEPTH": 10, "ACT": "tanh"}
    assert cell.splitlines()[:2] == ["DEPTH = 10", "ACT = 'tanh'"]


SYNTHETIC = [
    # 0: setup, with a magic: run whole
    'try:\n    import math\nexcept ModuleNotFoundError:\n    %pip install math\n    import math\nSCALE = 2',
    # 1: a function whose free names FACTOR and OFFSET are bound only later; x and y are its own
    "def helper(x):\n    y = x * FACTOR\n    return y + math.sqrt(OFFSET)",
    # 2: x is bound twice; the first binding is dead (rebound before anything reads it); `unused` is not needed
    "x = 1 / 0\nFACTOR = 3\nOFFSET = 4\nunused = 1 / 0",
    # 3: an expensive loop whose only link to what follows is its loop variable k (and its body's y)
    "for k in range(10**12):\n    y = k * k",
    # 4: acc is needed; it is built, then changed in place by a method call on acc[k]; other is not needed
    "acc = {k: [] for k in range(3)}\nfor k in range(3):\n    acc[k].append(helper(k))\nother = []\nother.append(1 / 0)",
    # 5: a global read by a function defined earlier (cell 6), bound before the function is called
    "LATE = 10",
    "def total():\n    return sum(len(v) for v in acc.values()) + LATE",
    # 7: x rebound, then read and rebound; a statement that reads only loop variables of its own
    "x = 1\nx = x + 1\nfor k in range(2):\n    y = k",
    # 8: the try-it cell
    "K = 2\nfor k in range(K):\n    y = helper(k)\nprint(total(), x, y, SCALE)",
]


def test_slicer_keeps_exactly_what_the_try_it_cell_needs():
    target = len(SYNTHETIC) - 1
    sliced = dict(slice_cells(SYNTHETIC, target))
    assert sorted(sliced) == [0, 1, 2, 4, 5, 6, 7, 8], "the expensive loop (cell 3) is linked only by loop variables"
    assert sliced[0] == SYNTHETIC[0] and sliced[target] == SYNTHETIC[target]
    assert sliced[1] == SYNTHETIC[1], "a needed function is kept whole"
    assert sliced[2] == "\nFACTOR = 3\nOFFSET = 4", "a function's free names are kept, its dead and unused ones not"
    assert sliced[4].splitlines() == SYNTHETIC[4].splitlines()[:3], "acc[k].append(...) changes the needed acc"
    assert sliced[7] == "x = 1\nx = x + 1", "x = x + 1 needs the x before it; a loop of its own is not needed"
    for i, source in sliced.items():  # every kept line where it was
        original = SYNTHETIC[i].splitlines()
        assert all(line in ("", original[n]) for n, line in enumerate(source.splitlines())), i
    # the slice runs (the setup's magic aside), and runs to the try-it cell's own result
    namespace: dict[str, object] = {"math": math, "SCALE": 2}
    for i, source in sliced.items():
        if i:
            exec(compile(source, f"<cell {i}>", "exec"), namespace)
    assert namespace["y"] == 1 * 3 + 2 and namespace["x"] == 2 and namespace["acc"] == {k: [3 * k + 2] for k in range(3)}


def test_slicer_follows_mutations_through_functions_and_arguments():
    sources = [
        "import torch\nSEEDS = [0, 1]",
        "log = []\nexpensive = sum(range(10**12))\nnamed = 1\nunnamed = 2",
        "def record(v):\n    log.append(v)",
        "%time seen = named",  # not Python: run whole, and whatever it names counts as read
        "record(1)\nmodel = {}\nfill(model)\nprint(model, expensive)\ntorch.manual_seed(expensive)\nax.plot(model)",
        "print(log, model, torch.zeros(1))",
    ]
    sliced = dict(slice_cells(sources, 5))
    assert sorted(sliced) == [0, 1, 2, 3, 4, 5]
    assert sliced[1] == "log = []\n\nnamed = 1", "print() changes nothing and torch is a module: `expensive` is not needed"
    assert sliced[4] == "record(1)\nmodel = {}\nfill(model)", (
        "record() changes the global log, fill(model) may change model; a method of another object (ax) changes only it")


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name not in NO_KNOBS], ids=lambda p: p.name)
def test_try_it_cell_runs_with_other_settings(path):
    nb = nbformat.read(path, as_version=4)
    nb.cells, _ = try_it_slice(nb, path.name)
    os.environ.pop("MPLBACKEND", None)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
