"""The checklist page (chapters/checklist.md) against the checkup it summarizes.

The page quotes the checkup's thresholds and names the chapters its report points to. Both are
read here from :mod:`vanishing.checkup` at run time, so a threshold or a fix pointer changed in the
library without the page (as happened when checkup v2 landed) fails a test.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import pytest

from vanishing import checkup

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "chapters" / "checklist.md").read_text()

# Each section of the page: the symptom whose verdict it explains, the keyword arguments of the
# checkup's fix ranking for the kind of model it covers (None: not a ranking of its own), and the
# thresholds its evidence must quote.
SECTIONS = {
    "Non-finite values": ("nonfinite", {}, []),
    "Exploding gradients": ("exploding", {}, ["exploding_ratio", "update_ratio"]),
    "Vanishing gradients in depth": ("vanishing", {"in_time": False},
                                     ["vanishing_ratio", "forward_ratio"]),
    "Vanishing gradients in time": ("vanishing", {"in_time": True}, ["vanishing_ratio"]),
    "Cut graph": ("vanishing", None, []),
    "Saturated units": ("saturation", {}, ["saturation_derivative", "saturated_share"]),
    "Dead units": ("dead", {}, ["dead_share"]),
    "Underflow in low precision": ("underflow", {}, ["underflow_share"]),
    "Uniformly too slow": ("stalled", {}, ["stalled_update"]),
}
# Other numbers an Evidence paragraph may state: the fewest sightings of a unit before it can be
# called dead; the gain above which attention query/key matrices are judged (a literal in
# checkup._is_query_key) and a sigmoid's largest slope, 1/4.
EXTRA = {
    "Dead units": [checkup.MIN_SEEN_FOR_DEAD],
    "Vanishing gradients in depth": [3.0, 0.25],
}
# Spans whose digits are not quoted thresholds: math, code, roles and their targets.
SKIP = re.compile(r"\$[^$]*\$|\{[\w:-]+\}`[^`]*`|`[^`]*`")
NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?(?:e-?\d+)?)(?:/(\d+))?(%?)(?![\w.]*\w)")


def _sections() -> dict[str, str]:
    parts = re.split(r"^## (.+)$", PAGE, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def _numbers(text: str) -> list[float]:
    """The numbers written in ``text`` outside math and code: 0.01, 1e-5, 1/4, 1%."""
    out = []
    for m in NUMBER.finditer(SKIP.sub(" ", text)):
        x = float(m.group(1)) / (float(m.group(2)) if m.group(2) else 1.0)
        out.append(x / 100 if m.group(3) else x)
    return out


def _evidence(section: str) -> str:
    text = _sections()[section]
    return text.split("**Evidence:**", 1)[1].split("**Why:**", 1)[0]


def _table() -> dict[str, list[str]]:
    """symptom -> the checkup-evidence cells of the table rows whose evidence names it first."""
    rows: dict[str, list[str]] = {}
    for line in PAGE.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] == "symptom" or set(cells[0]) <= {"-"}:
            continue
        m = re.match(r"`(\w+)`", cells[2])
        assert m, f"table row {cells[0]!r}: its evidence does not start with the verdict's name"
        rows.setdefault(m.group(1), []).append(cells[2])
    return rows


def _close(x: float, values: list[float]) -> bool:
    return any(math.isclose(x, v, rel_tol=1e-9) for v in values)


def _fix_chapters(symptom: str, in_time: bool) -> set[str]:
    """Every chapter the checkup's fixes can name for this symptom, over all kinds of model."""
    keys = ("adaptive", "recurrent", "gated", "norm", "batchnorm")
    chapters = set()
    for flags in itertools.product([False, True], repeat=len(keys) + 1):
        has = dict(zip(keys, flags[:-1], strict=True))
        fixes = checkup._fixes(symptom, has=has, saturating=flags[-1], in_time=in_time)
        chapters |= {chapter for _, chapter in fixes}
    return chapters


def test_every_section_and_symptom_is_on_the_page():
    assert set(_sections()) == set(SECTIONS), "a section was added, removed or renamed"
    assert {s for s, _, _ in SECTIONS.values()} == set(checkup.SYMPTOMS)
    assert set(_table()) == set(checkup.SYMPTOMS), "the table needs one row per verdict"
    quoted = {k for _, _, keys in SECTIONS.values() for k in keys}
    assert quoted == set(checkup.THRESHOLDS), "every threshold of the checkup is quoted once"


@pytest.mark.parametrize("section", [s for s, (_, _, keys) in SECTIONS.items() if keys])
def test_evidence_quotes_the_checkups_thresholds(section):
    symptom, _, keys = SECTIONS[section]
    wanted = [checkup.THRESHOLDS[k] for k in keys]
    found = _numbers(_evidence(section))
    for key, value in zip(keys, wanted, strict=True):
        assert _close(value, found), f"{section}: {key} = {value:g} not quoted (found {found})"
    stray = [x for x in found if not _close(x, wanted + EXTRA.get(section, []))]
    assert not stray, f"{section}: numbers that are no threshold of the checkup: {stray}"


def test_table_quotes_only_the_checkups_thresholds():
    for symptom, cells in _table().items():
        allowed = [checkup.THRESHOLDS[k] for s, _, keys in SECTIONS.values() if s == symptom
                   for k in keys]
        for cell in cells:
            stray = [x for x in _numbers(cell) if not _close(x, allowed)]
            assert not stray, f"table row {symptom!r}: {stray} is no threshold of the checkup"


@pytest.mark.parametrize("section", list(SECTIONS))
def test_section_names_the_chapters_the_report_points_to(section):
    symptom, kwargs, _ = SECTIONS[section]
    if kwargs is None:  # a cut graph: the one fix the checkup then gives
        wanted = {checkup._RECONNECT[1]}
    else:
        in_time = kwargs.get("in_time", False)
        wanted = _fix_chapters(symptom, in_time)
        if not in_time:  # the report of a recurrent model's fading time profile names 09 itself
            wanted.add(checkup._CHAPTERS[symptom])
        if symptom == "vanishing" and not in_time:
            wanted.add(checkup._ATTENTION[1])
    named = set(re.findall(r"\{doc\}`([^`]+)`", _sections()[section]))
    assert wanted <= named, f"{section}: the checkup points to {sorted(wanted - named)} too"


def test_every_page_the_checklist_points_to_exists():
    targets = set(re.findall(r"\{doc\}`([^`]+)`", PAGE))
    assert targets
    missing = [t for t in targets
               if not any((ROOT / "chapters" / f"{t}{ext}").exists() for ext in (".ipynb", ".md"))]
    assert not missing, f"no such page: {missing}"


def test_the_number_reader_reads_what_the_page_writes():
    # so that the tests above cannot pass by reading nothing
    assert _numbers("below 1e-5, above 0.01 (1%), at most 1/4, in float16, {doc}`13_checkup`, "
                    "$6.1\\times10^{-5}$") == [1e-5, 0.01, 0.01, 0.25]
