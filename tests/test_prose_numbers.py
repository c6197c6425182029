"""Every decimal in a chapter's prose is a number one of its cells printed (CONTRIBUTING: "the prose teaches; the code proves").

For each chapter notebook this reads the committed JSON only (no execution) and
extracts every decimal number from the markdown cells: prose, MyST directive
bodies and math alike, but not code spans, fenced code, URLs, labels, citations,
version strings or section numbers. Each must match a number in the same
notebook's stored outputs (stdout, text/plain, text/html, text/latex, text/markdown)
up to formatting:

* ``v`` written with ``d`` decimals matches an output ``o`` when ``o`` rounds to
  ``v`` at ``d`` decimals (``0.084`` matches ``8.4e-02`` and ``0.0839``);
* a percentage matches a fraction and the other way round (``7.6%`` matches
  ``0.076``; ``0.076`` matches ``7.6%``);
* scientific notation in the prose (``1.2e-05``, ``1.2 \\times 10^{-5}``,
  ``1.2 x 10^-5``) matches when ``o`` rounds to the mantissa at its decimals;
* an exact fraction printed by sympy (``\\frac{1}{4}``, ``1/4``) counts as its value;
* a literal in a code cell's source (a hyperparameter such as ``lr = 0.05``)
  matches only exactly.

What is legitimately not printed is listed below, keyed by (notebook stem, number
as written), one reason each: ``ALLOWED`` for a figure quoted from a cited source,
a value an exercise gives, or a number printed by an exercise solution's own code
(a markdown block, not a cell); ``QUOTED`` for a result quoted from an earlier
chapter, matched against that chapter's outputs; ``DERIVED`` for a number the sentence works out from
given constants, with the expression, which the test evaluates. Everything measured
must be matched against outputs, so changing a printed result without updating the
prose fails here.

Run ``python tests/test_prose_numbers.py [notebooks...]`` for a report of every
unmatched number with its sentence.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import pytest

CHAPTERS = Path(__file__).resolve().parent.parent / "chapters"

# (notebook stem, number as written) -> the chapter whose outputs print it: a result quoted
# from an earlier chapter (the sentence cites it), checked against that chapter's outputs.
QUOTED: dict[tuple[str, str], str] = {
}

def _solution(exercise: str) -> str:
    """The reason for a number that an exercise solution's own code prints (re-checked under the pinned kernels)."""
    return f"printed by {exercise}'s solution code (a markdown block, not a cell); re-run under the pinned kernels 2026-12-01"


RELU_ISO = ("printed by ex-init-relu-isometry's solution code (a markdown block); "
            "re-run under the default and another-cpu kernels 2026-12-07")

EX_NORM_WARMUP = ("printed by ex-norm-warmup's solution code (a markdown block, not a cell); "
                  "re-run under the pinned and another-cpu kernels 2026-12-07")

EX_NORM_CONV = ("printed by ex-norm-conv's solution code (a markdown block, not a cell); "
                "re-run under the pinned and another-cpu kernels 2026-12-07")

EX_NORM_GAMMA = ("printed by ex-norm-gamma's training code (a markdown block, not a cell); "
                 "re-run under the pinned and another-cpu kernels 2026-12-07")

EX_HIER_WEAK = ("printed by ex-hier-compress-threshold's solution code (a markdown block, not a cell); "
                "re-run under the pinned kernels 2026-12-07")
SECOND_PASS = ("printed by the solution code of {} (a markdown block); re-run under the default and another-cpu "
               "kernels 2026-12-07")

# (notebook stem, number exactly as written in the prose) -> why no cell prints it.
ALLOWED: dict[tuple[str, str], str] = {
    ("02_recurrent_model", "0.95"): "the decay factor an exercise (ex-rnn-horizon) gives",
    ("04_loss_wall", "2.8"): "the starting bias an exercise (ex-wall-plateau) gives",
    ("06_initialization", "2.5\\times10^{-4}"): _solution("ex-init-tanh-map"),
    ("06_initialization", "0.999"): _solution("ex-init-tanh-map"),
    ("06_initialization", "0.62"): _solution("ex-init-tanh-map"),
    ("06_initialization", "2.1"): _solution("ex-init-tanh-map"),
    ("06_initialization", "1.04"): _solution("ex-init-tanh-map"),
    ("06_initialization", "1.11"): _solution("ex-init-tanh-map"),
    ("06_initialization", "1.36"): _solution("ex-init-tanh-map"),
    ("06_initialization", "0.21"): _solution("ex-init-yp-scan"),
    ("07_normalization", "0.056"): _solution("ex-norm-gamma"),
    ("06_initialization", "1.5"): "the sigma_w^2 value the exercise ex-init-tanh-map gives",
    ("06_initialization", "0.29"): _solution("ex-init-tanh-map"),
    ("06_initialization", "5.3"): _solution("ex-init-orthogonal"),
    ("06_initialization", "2.8"): _solution("ex-init-orthogonal"),
    ("06_initialization", "2.0\\times10^{-7}"): _solution("ex-init-yp-scan"),
    ("06_initialization", "3.7\\times10^{-4}"): _solution("ex-init-yp-scan"),
    ("06_initialization", "9.1\\times10^{-3}"): _solution("ex-init-yp-scan"),
    ("06_initialization", "3.5\\times10^{-3}"): _solution("ex-init-yp-scan"),
    ("06_initialization", "9.3\\times10^{-6}"): _solution("ex-init-yp-scan"),
    ("06_initialization", "0.05"): RELU_ISO,
    ("06_initialization", "0.04"): RELU_ISO,
    ("06_initialization", "0.06"): RELU_ISO,
    ("06_initialization", "0.03"): RELU_ISO,
    ("06_initialization", "0.02"): RELU_ISO,
    ("06_initialization", "5.1"): RELU_ISO,
    ("06_initialization", "8.0"): RELU_ISO,
    ("06_initialization", "0.86"): SECOND_PASS.format("ex-init-dropout-symmetry"),
    ("06_initialization", "0.52"): SECOND_PASS.format("ex-init-dropout-symmetry"),
    ("06_initialization", "0.63"): SECOND_PASS.format("ex-init-dropout-symmetry"),
    ("06_initialization", "0.079"): SECOND_PASS.format("ex-init-dropout-symmetry"),
    ("06_initialization", "0.16"): SECOND_PASS.format("ex-init-dropout-symmetry"),
    ("06_initialization", "0.35"): SECOND_PASS.format("ex-init-depth-scale"),
    ("06_initialization", "0.36"): SECOND_PASS.format("ex-init-depth-scale"),
    ("07_normalization", "0.041"): _solution("ex-norm-gamma"),
    ("07_normalization", "1.1"): EX_NORM_GAMMA,
    ("07_normalization", "1.3"): EX_NORM_GAMMA,
    ("07_normalization", "0.69"): EX_NORM_GAMMA,
    ("07_normalization", "0.65"): EX_NORM_GAMMA,
    ("07_normalization", "0.83"): EX_NORM_GAMMA,
    ("07_normalization", "0.064"): EX_NORM_WARMUP,
    ("07_normalization", "0.22"): EX_NORM_WARMUP,
    ("07_normalization", "0.17"): EX_NORM_WARMUP,
    ("07_normalization", "0.36"): EX_NORM_WARMUP,
    ("07_normalization", "0.32"): EX_NORM_WARMUP,
    ("07_normalization", "2.0"): EX_NORM_WARMUP,
    ("07_normalization", "1.160"): EX_NORM_CONV,
    ("07_normalization", "1.151"): EX_NORM_CONV,
    ("07_normalization", "1.175"): EX_NORM_CONV,
    ("07_normalization", "1.212"): EX_NORM_CONV,
    ("07_normalization", "0.091"): EX_NORM_WARMUP,
    ("07_normalization", "1.169"): EX_NORM_CONV,
    ("07_normalization", "1.167"): EX_NORM_CONV,
    ("07_normalization", "1.185"): EX_NORM_CONV,
    ("07_normalization", "1.165"): EX_NORM_CONV,
    ("07_normalization", "1.193"): EX_NORM_CONV,
    ("07_normalization", "1.164"): EX_NORM_CONV,
    ("07_normalization", "1.179"): EX_NORM_CONV,
    ("07_normalization", "1.170"): EX_NORM_CONV,
    ("05_activations", "0.752"): "the root of GELU' that ex-act-gelu-negative's solution code prints (sp.nsolve: -0.7518)",
    ("08_residual", "7.93%"): "He et al.'s CIFAR-10 test error (1202 layers), quoted and cited",
    ("08_residual", "6.43%"): "He et al.'s CIFAR-10 test error (110 layers), quoted and cited",
    ("08_residual", "4.62%"): "the pre-activation ResNet's CIFAR-10 test error (1001 layers), quoted and cited",
    ("08_residual", "1.5"): "an illustrative branch derivative in (1.5)^50, the example of an exploding residual product",
    ("10_hierarchies", "0.99"): "a threshold an exercise (ex-hier-compress-threshold) asks about",
    ("10_hierarchies", "1.86"): EX_HIER_WEAK,
    ("10_hierarchies", "0.63"): EX_HIER_WEAK,
    ("11_beyond_gradient", "1.2"): "Rprop's standard eta+ (Riedmiller and Braun; torch.optim.Rprop's default), cited",
    ("11_beyond_gradient", "3.45e-02"): "printed by ex-beyond-scale's solution code (a markdown block, not a cell); re-run 2026-11-22",
    ("12_hardware", "0.000000003"): "the source text's wrong value of 0.25**19, quoted to correct it",
    ("13_checkup", "0.000000003"): "the source text's wrong value of 0.25**19, quoted to correct it",
    ("13_checkup", "1.5"): "the second bias ex-checkup-dead's solution tries (a markdown block, not a cell); re-run 2026-12-01",
    ("13_checkup", "0.643"): "printed by ex-checkup-homogeneity's solution code (a markdown block, not a cell); re-run 2026-11-22",
    ("13_checkup", "0.708"): "printed by ex-checkup-homogeneity's solution code (a markdown block, not a cell); re-run 2026-11-22",
    ("13_checkup", "0.814"): "printed by ex-checkup-homogeneity's solution code (a markdown block, not a cell); re-run 2026-11-22",
    ("13_checkup", "1.71"): "printed by ex-checkup-homogeneity's solution code (a markdown block, not a cell); re-run 2026-11-22",
    ("13_checkup", "0.43"): "printed by ex-checkup-homogeneity's solution code (a markdown block, not a cell); re-run 2026-11-22",
    ("13_checkup", "8.48"): "printed by ex-checkup-homogeneity's solution code (a markdown block, not a cell); re-run 2026-11-22",
    ("a1_checking_sources", "1.43"): "Tesla K40 fp64 peak in TFLOPS, vendor figure (nvidia2013k40), 12_hardware's table",
    ("a1_checking_sources", "6.144"): "GTX TITAN X fp32 peak in TFLOPS, 3072 x 2 x 1.0 GHz (nvidia2015titanx), 12_hardware's table",
}

# Numbers the sentence itself works out from given constants: (expression, reason). The test redoes the arithmetic,
# so such a number must still round to what the expression gives (absolute values; math's names are in scope).
DERIVED: dict[tuple[str, str], tuple[str, str]] = {
    ("02_recurrent_model", "19.5"): ("1 / abs(log(0.95))", "horizon 1/|ln eta| for the exercise's eta"),
    ("02_recurrent_model", "1.05"): ("1 / 0.95", "the source's horizon 1/eta for the exercise's eta"),
    ("02_recurrent_model", "4.6"): ("log(100)", "e-folding lags for a 1% error"),
    ("03_dynamical_system", "0.8814"): ("atanh(1 / sqrt(2))", "artanh r for w = 8, worked in the solution"),
    ("03_dynamical_system", "2.8284"): ("8 * (1 / sqrt(2)) / 2", "w r / 2 for w = 8"),
    ("03_dynamical_system", "1.7627"): ("2 * atanh(1 / sqrt(2))", "2 artanh r for w = 8"),
    ("03_dynamical_system", "5.066"): ("4 + 2 * sqrt(2) - 2 * atanh(1 / sqrt(2))", "lower fold bias for w = 8"),
    ("03_dynamical_system", "2.934"): ("4 - 2 * sqrt(2) + 2 * atanh(1 / sqrt(2))", "upper fold bias for w = 8"),
    ("03_dynamical_system", "2.13"): ("2 * (2 * sqrt(2) - 2 * atanh(1 / sqrt(2)))", "bistable width for w = 8"),
    ("03_dynamical_system", "0.31"): ("2 * (5 * sqrt(0.2) / 2 - 2 * atanh(sqrt(0.2)))", "bistable width for w = 5"),
    ("03_dynamical_system", "0.031"): ("(2.5 - 2.3444) / 5", "pulse threshold from the printed fold -2.3444"),
    ("07_normalization", "0.11"): ("1.110 - 1.000", "largest GroupNorm gap above the uncorrected prediction, ReLU"),
    ("04_loss_wall", "2.3473"): ("log(0.3 / 0.7) - 1.5", "the wall formula for x(0) = 0.3"),
    ("04_loss_wall", "0.2764"): ("0.5 - sqrt(5) / 10", "lower fold state for w = 5 (printed in 03_dynamical_system)"),
    ("04_loss_wall", "0.7236"): ("0.5 + sqrt(5) / 10", "upper fold state for w = 5 (printed in 03_dynamical_system)"),
    ("04_loss_wall", "2.6556"): ("2.5 - 2 * log((1 + sqrt(5)) / 2) + sqrt(5) / 2", "the other fold bias for w = 5"),
    ("04_loss_wall", "1.025"): ("1 - 0.1 + 0.1 * 5 / 4", "one-step multiplier 1 - eps + eps w sigma'(0) at the unstable point"),
    ("05_activations", "0.025"): ("0.1 / 4", "probes.activation_stats' default threshold 0.1 times sigma'(0) = 1/4"),
    ("05_activations", "0.026"): ("(1 - sqrt(1 - 4 * 0.025)) / 2", "sigmoid output where sigma' = 0.025"),
    ("05_activations", "0.974"): ("(1 + sqrt(1 - 4 * 0.025)) / 2", "sigmoid output where sigma' = 0.025"),
    ("05_activations", "1.9998"): ("2 / (1 + 0.01**2)", "leaky-ReLU gain for alpha = 0.01"),
    ("05_activations", "1.4\\times10^{-45}"): ("2.0**-149", "smallest positive float32"),
    ("08_residual", "1.1"): ("1 + 0.1", "residual factor 1 + a for a = 0.1"),
    ("08_residual", "3.67"): ("sqrt(54) / 2", "binomial standard deviation, worked in the sentence"),
    ("09_lstm", "0.13"): ("0.98**100", "worked in the solution"),
    ("09_lstm", "1.7 \\times 10^{-9}"): ("0.98**1000", "worked in the solution"),
    ("09_lstm", "0.99931"): ("0.5 ** (1 / 1000)", "worked in the solution"),
    ("11_beyond_gradient", "2.303"): ("log(10)", "loss of a uniform guess among ten classes"),
    ("11_beyond_gradient", "7.8"): ("1000 * 5 / 639", "1000 p for the printed share p = 5/639"),
    ("12_hardware", "2.2"): ("12 / log2(67000 / 1581)", "doubling time from the table's GTX 580 and H100 fp32 rows"),
    ("12_hardware", "0.24"): ("2.0**-12 / 1e-3", "float16 weight 1.0 at eta = 1e-3, a decrease: worked in ex-hw-swamping"),
    ("12_hardware", "3.9"): ("2.0**-8 / 1e-3", "bfloat16 weight 1.0 at eta = 1e-3, an increase: worked in ex-hw-swamping"),
    ("13_checkup", "7.45"): ("(1.0 / 0.8) ** 9", "(c/0.8)^9 for c = 1.0, as the sentence says"),
    ("13_checkup", "38.4"): ("(1.2 / 0.8) ** 9", "(c/0.8)^9 for c = 1.2, as the sentence says"),
}


@dataclass(frozen=True)
class ProseNumber:
    text: str  # as written, e.g. "0.084", "7.6%", "1.2e-05"
    value: float  # the value as written, exponent applied, percent sign not (7.6% -> 7.6)
    tolerance: float  # half a unit in the last written digit, in the units of `value`
    percent: bool  # written as a percentage
    context: str  # the surrounding sentence fragment


# --- prose -------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})(?P<info>[^\n]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.M | re.S)
_ROLE_OR_CODE = re.compile(r"(\{(?P<role>[\w:-]+)\})?(?P<ticks>`+)(?P<body>.+?)(?P=ticks)", re.S)
_PROSE_ROLES = {"math", "eq"}  # roles whose body is read like math; any other role or bare code span is dropped
_DROP = [
    re.compile(r"<[^>\n]+>"),  # html tags and autolinks
    re.compile(r"https?://\S+"),
    re.compile(r"^\([\w:.-]+\)=\s*$", re.M),  # (label)=
    re.compile(r"^:[\w-]+:.*$", re.M),  # directive options (:label:, :name:, :class:)
    re.compile(r"\b\d+\.\d+\.\d+(?:\.\d+)*\b"),  # version numbers 2.13.0
    re.compile(r"\bv\d+(?:\.\d+)+|\b(?:version|Python|torch|PyTorch|Jupyter Book|NumPy|SymPy|CUDA)\s*\d+(?:\.\d+)+", re.I),
    # section, equation, figure, table, theorem numbers: "Section 3.2", "eq. (2.1)", "Table 4.1", "§4.2"
    re.compile(
        r"(?:§|\b(?:sections?|sec\.|chapters?|ch\.|figures?|fig\.|tables?|tab\.|equations?|eqs?\.|theorems?|thm\.|lemmas?|appendix)\s*)"
        r"\(?\d+(?:\.\d+)+\)?(?:\s*(?:[-–]|and|,)\s*\(?\d+(?:\.\d+)+\)?)*",
        re.I,
    ),
]
_LINK = re.compile(r"(!?\[)([^\]]*)\]\([^)]*\)")  # a link or image keeps its text, loses its target
_SCI_TAIL = re.compile(r"\s*(?:[eE](?P<e>[-+−]?\d+)|(?:\\times|\\cdot|×|·|x)\s*10\s*\^\s*\{?\s*(?P<p>[-+−]?\d+)\s*\}?)")
_NUMBER = re.compile(r"(?<![\w.,])(?P<num>\d{1,3}(?:,\d{3})+\.\d+|\d+\.\d+)(?!\.\d)")
_PERCENT = re.compile(r"\s*(?:\\?%|\s?percent\b|\s?per\s?cent\b)")


def _strip_markdown(text: str) -> str:
    """The readable text of one markdown cell: fences kept only when they are MyST directives (prose inside)."""

    def fence(m: re.Match) -> str:
        info = m.group("info").strip()
        if info.startswith("{") and not info.startswith(("{code", "{code-cell", "{literalinclude")):
            return _strip_markdown(m.group("body"))
        return "\n"

    text = _FENCE.sub(fence, text)

    def role(m: re.Match) -> str:
        return m.group("body") if m.group("role") in _PROSE_ROLES else " "

    text = _ROLE_OR_CODE.sub(role, text)
    text = _LINK.sub(lambda m: m.group(2), text)
    for pattern in _DROP:
        text = pattern.sub(" ", text)
    return text


def prose_numbers(markdown: str) -> list[ProseNumber]:
    """Every decimal number stated in one markdown cell."""
    text = _strip_markdown(markdown)
    found = []
    for m in _NUMBER.finditer(text):
        raw = m.group("num").replace(",", "")
        decimals = len(raw.split(".")[1])
        value = float(raw)
        tol = 0.5 * 10.0**-decimals
        end = m.end()
        written = m.group("num")
        sci = _SCI_TAIL.match(text, end)
        if sci:
            exp = int((sci.group("e") or sci.group("p")).replace("−", "-"))
            value *= 10.0**exp
            tol *= 10.0**exp
            end = sci.end()
            written = text[m.start() : end].strip()
        pct = _PERCENT.match(text, end)
        if pct:
            written = text[m.start() : pct.end()].strip()
        start = max(0, text.rfind("\n", 0, m.start()) + 1, m.start() - 80)
        stop = text.find("\n", end)
        stop = min(stop if stop != -1 else len(text), end + 60)
        found.append(ProseNumber(written, value, tol, bool(pct), " ".join(text[start:stop].split())))
    return found


# --- outputs -----------------------------------------------------------------------------------------

_OUT_NUMBER = re.compile(
    r"(?<![\w.])[-+−]?(?:\d+(?:,\d{3})+(?:\.\d+)?|\d*\.?\d+)(?:[eE][-+]?\d+|\s*(?:\\times|\\cdot|×)\s*10\^\{?[-+−]?\d+\}?)?(?P<pct>\s*\\?%)?"
)
_FRAC = re.compile(r"\\frac\{(\d+)\}\{(\d+)\}|(?<![\w.])(\d+)\s*/\s*(\d+)(?![\w.])")


def _parse_output_number(token: str) -> float:
    token = token.replace("−", "-").replace(",", "").replace("\\%", "").replace("%", "").strip()
    m = re.match(r"(.+?)\s*(?:\\times|\\cdot|×)\s*10\^\{?([-+]?\d+)\}?$", token)
    if m:
        return float(m.group(1)) * 10.0 ** int(m.group(2))
    return float(token)


def output_values(nb: dict) -> list[tuple[float, bool]]:
    """Every number in the notebook's stored text outputs, with whether it was printed as a percentage."""
    texts = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        for out in cell.get("outputs", []):
            if out["output_type"] == "stream" and out.get("name") == "stdout":
                texts.append("".join(out["text"]))
            for mime in ("text/plain", "text/html", "text/latex", "text/markdown"):
                if mime in out.get("data", {}):
                    texts.append("".join(out["data"][mime]))
    values = []
    for text in texts:
        for m in _OUT_NUMBER.finditer(text):
            try:
                v = abs(_parse_output_number(m.group(0)))
            except ValueError:
                continue
            values.append((v, bool(m.group("pct"))))
        for m in _FRAC.finditer(text):
            a, b = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            if int(b):
                values.append((float(Fraction(int(a), int(b))), False))
    return values


def code_literals(nb: dict) -> set[float]:
    """Decimal literals in code cells' sources: settings the reader sees in the code."""
    literals = set()
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            for m in re.finditer(r"(?<![\w.])\d*\.\d+(?:[eE][-+]?\d+)?|(?<![\w.])\d+[eE][-+]?\d+", "".join(cell["source"])):
                literals.add(float(m.group(0)))
    return literals


def matching_output(number: ProseNumber, values: list[tuple[float, bool]]) -> float | None:
    """The first output value that, rounded as the prose writes it, is the prose number; None if there is none.

    A percentage in the prose matches the same digits printed (``7.6`` or ``7.6%``) or a printed
    fraction times 100 (``0.076``); a plain number matches a printed percentage divided by 100.
    """
    v = abs(number.value)
    tol = number.tolerance * (1 + 1e-9) + 1e-300
    for o, printed_pct in values:
        candidates = [o]
        if number.percent and not printed_pct:
            candidates.append(100 * o)
        if printed_pct and not number.percent:
            candidates.append(o / 100)
        if any(abs(c - v) <= tol for c in candidates):
            return o
    return None


def matches(number: ProseNumber, values: list[tuple[float, bool]], literals: set[float]) -> bool:
    value = abs(number.value) / (100 if number.percent else 1)
    if any(math.isclose(value, lit, rel_tol=1e-12) for lit in literals):
        return True
    return matching_output(number, values) is not None


def unmatched(path: Path) -> list[ProseNumber]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    values = output_values(nb)
    literals = code_literals(nb)
    missing = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        for number in prose_numbers("".join(cell["source"])):
            key = (path.stem, number.text)
            if key in ALLOWED or key in DERIVED:
                continue
            if key in QUOTED:
                quoted = json.loads((CHAPTERS / f"{QUOTED[key]}.ipynb").read_text(encoding="utf-8"))
                if matching_output(number, output_values(quoted)) is None:
                    missing.append(number)
                continue
            if not matches(number, values, literals):
                missing.append(number)
    return missing


NOTEBOOKS = sorted(CHAPTERS.glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_prose_numbers_are_printed(path: Path) -> None:
    missing = unmatched(path)
    listing = "\n".join(f"  {n.text!r}: ...{n.context}..." for n in missing)
    assert not missing, f"{path.name}: numbers in the prose that no cell printed (fix the prose, or allow-list with a reason):\n{listing}"


def _written(stem: str) -> dict[str, ProseNumber]:
    nb = json.loads((CHAPTERS / f"{stem}.ipynb").read_text(encoding="utf-8"))
    return {n.text: n for c in nb["cells"] if c["cell_type"] == "markdown" for n in prose_numbers("".join(c["source"]))}


def test_allow_list_entries_are_still_in_the_prose() -> None:
    """An entry whose number has left the prose is stale and must go."""
    stale = [key for key in (*ALLOWED, *DERIVED, *QUOTED) if key[1] not in _written(key[0])]
    assert not stale, f"ALLOWED/DERIVED entries no longer in the prose: {stale}"


@pytest.mark.parametrize("key", list(DERIVED), ids=[f"{stem}:{text}" for stem, text in DERIVED])
def test_derived_numbers_are_the_arithmetic_they_claim(key: tuple[str, str]) -> None:
    expression, _ = DERIVED[key]
    number = _written(key[0]).get(key[1])
    if number is None:
        pytest.skip("not in the prose (reported by the stale-entry test)")
    value = abs(eval(expression, {"__builtins__": {"abs": abs}}, vars(math)))  # noqa: S307 - constant expressions written above
    assert matching_output(number, [(value, False)]) is not None, f"{key}: {expression} = {value:.6g}, the prose says {number.text}"


if __name__ == "__main__":
    paths = [Path(a) for a in sys.argv[1:]] or NOTEBOOKS
    for p in paths:
        for n in unmatched(p):
            print(f"{p.stem}\t{n.text}\t{n.context}")
