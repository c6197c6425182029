"""Learners turn the knobs: each chapter's "try it" cell still runs with a non-default setting.

Convention (CONTRIBUTING.md): a chapter has one code cell tagged ``try-it``;
each knob in it is one line ``NAME = value  # try: other, another``. This test
re-executes the chapter up to that cell with every knob set to its first
alternative and requires that nothing raises. Outputs are not compared.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
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


def test_knob_parsing():
    cell, changed = knobs('DEPTH = 20  # try: 10, 50\nACT = "relu"  # try: "tanh"\nx = DEPTH')
    assert changed == {"DEPTH": 10, "ACT": "tanh"}
    assert cell.splitlines()[:2] == ["DEPTH = 10", "ACT = 'tanh'"]


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name not in NO_KNOBS], ids=lambda p: p.name)
def test_try_it_cell_runs_with_other_settings(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "try-it" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected exactly one code cell tagged 'try-it', found {len(tagged)}"
    index = tagged[0]
    source, changed = knobs(nb.cells[index].source)
    assert changed, f"{path.name}: the try-it cell has no knob lines of the form `NAME = value  # try: other`"
    nb.cells = nb.cells[: index + 1]
    nb.cells[index].source = source
    os.environ.pop("MPLBACKEND", None)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
