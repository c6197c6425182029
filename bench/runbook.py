"""The full-scale runbook: what the book measures on one GPU, aiming at eight minutes in all, into one data file.

    python bench/runbook.py                          # on a CUDA machine: writes bench/results/<gpu name>.json
    python bench/runbook.py --quick --out run.json   # on the CPU at tiny sizes: the same code path (the CI test)
    python bench/runbook.py --chapters 05 08         # only these chapters' heaviest experiments
    python bench/runbook.py --budget 300             # another time limit in seconds, everything included

The results file records the machine (GPU name and compute capability, driver, torch,
CUDA and cuDNN versions, CPU) and, each section timed:

1. ``matmul``: n x n matrix-product throughput in float32, float32 with TF32 allowed,
   bfloat16, float16 and float8 (e4m3, through ``torch._scaled_mm``, where the GPU has it),
   n up to 8192;
2. ``training_step``: one SGD step of chapter 12's deep sigmoid network, on the CPU (all
   its cores) and on the GPU, at chapter 12's ``small`` and ``full`` sizes;
3. ``underflow``: where powers of 1/4 become subnormal and zero in each format when the
   GPU multiplies (PyTorch's elementwise float16 and bfloat16 kernels compute in float32
   and round, and float8 is emulated, so this tests conversions and the GPU's float32
   subnormal handling, not tensor-core arithmetic: it will very likely match the CPU);
   whether matrix products (the tensor-core paths) keep a subnormal input and a subnormal
   result; whether TF32 was really used in the float32 products that allowed it (a product
   that TF32 rounds differently from float32); where the first exactly-zero gradient of
   chapter 12's 520-layer sigmoid network sits in each format; each beside the CPU's answer;
4. ``grad_scaler``: ``torch.amp.GradScaler`` with float16 autocast on the GPU (chapter 12's
   40-layer network), and bfloat16 autocast without it;
5. ``chapters``: each chapter's heaviest experiment (:data:`HEAVIEST`) under
   ``VANISHING_SCALE=full`` on the GPU: the chapter's setup cell, the statements of earlier
   cells the experiment needs (sliced by ``tools/cell_slice.py``, as the try-it test does)
   and the experiment's own cell, in a fresh kernel, within its share of the time left.
   Cheapest first, so that time a quick chapter leaves goes to the heavier ones. A chapter
   that does not finish at ``full`` in its share is recorded as such, with the seconds it
   had, and then run at ``small`` on the GPU in what is left of the budget (a second row,
   ``fallback_for: full``), the largest size known to fit. Each limit keeps a margin
   (:data:`CHAPTER_MARGIN_S`) for stopping the kernel, which happens outside the limit.

The file is written after every section, so a run cut short keeps what it measured.
Chapters read tables from such files (chapter 12 reads ``bench/results/*.json``); their
stored outputs stay the CPU ``small`` run. ``--quick`` runs every section on the CPU at
tiny sizes and must be given ``--out`` outside ``bench/results/``: a CPU run is never a
GPU result. Timings depend on the machine and its load; every timer waits for the device
(``vanishing.precision.time_call``).
"""

from __future__ import annotations

# ruff: noqa: I001  (vanishing comes first: importing it pins the CPU kernels before NumPy and torch pick theirs)
import vanishing as vg

import argparse
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import nbformat
import torch
from bench_hardware import training_step_seconds
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from vanishing import models, precision

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "tools"))
from cell_slice import slice_cells  # noqa: E402  # shared with the try-it test

#: Each chapter's heaviest experiment: the start of the first line of its code cell (unique in the chapter), and
#: the seconds that cell took at ``small`` scale on one CPU thread: every cell of every chapter timed on
#: 2026-12-07 (nbclient's cell timestamps, one chapter at a time, on the shared two-core build machine under
#: load, so inflated by a load that varied). The seconds only order the chapters, cheapest first. Setup cells
#: and derivations (sympy) are not experiments: 03's and a1's heaviest numerical cells are listed instead.
HEAVIEST: dict[str, tuple[str, float]] = {
    "01_history": ("TRAIN_BATCH = 64", 56.87),
    "02_recurrent_model": ("scales = 2.0 ** torch.linspace", 4.71),
    "03_dynamical_system": ("xs_curve = torch.linspace", 0.88),
    "04_loss_wall": ("SHOW_LAG = 10", 32.28),
    "05_activations": ("LR, BATCH, LEARNS = ", 78.76),
    "06_initialization": ("LEFT_CHANCE = ", 69.42),
    "07_normalization": ("LEARNS = 0.5", 48.58),
    "08_residual": ("# Plain networks, shallowest and deepest", 14.31),
    "09_lstm": ("def make_model", 65.87),
    "10_hierarchies": ("def fit_upper", 25.56),
    "11_beyond_gradient": ("(x_train, y_train), (x_test, y_test) = data.digits(device=DEVICE)", 55.67),
    "12_hardware": ("def stacked_forward", 10.89),
    "13_checkup": ("gallery = {", 57.48),
    "a1_checking_sources": ("from torch import nn", 1.47),
}

#: Seconds kept back from each chapter's limit: stopping a kernel after a timeout takes a few seconds that the
#: limit does not count (about 3 s measured on the CPU).
CHAPTER_MARGIN_S = 4.0

#: Sizes per mode. ``gpu`` is the real run; ``quick`` the CPU test of the same code path.
SIZES = {
    "gpu": dict(matmul=(256, 512, 1024, 2048, 4096, 8192), repeat=10, step_repeat=5,
                steps={"small": dict(depth=20, width=256, batch=256), "full": dict(depth=50, width=1024, batch=1024)},
                chain=dict(depth=520, width=16, batch=16), amp=dict(depth=40, width=16, batch=16), probe_n=256,
                min_chapter_s=20.0),
    "quick": dict(matmul=(32, 64), repeat=2, step_repeat=2,
                  steps={"tiny": dict(depth=4, width=32, batch=32)},
                  chain=dict(depth=60, width=8, batch=8), amp=dict(depth=40, width=16, batch=16), probe_n=16,
                  min_chapter_s=5.0),
}

#: The matrix-product formats: name in the results -> (torch dtype of the operands, TF32 allowed).
MATMUL_FORMATS = {
    "float32": (torch.float32, False),
    "tf32": (torch.float32, True),
    "bfloat16": (torch.bfloat16, False),
    "float16": (torch.float16, False),
    "float8_e4m3fn": (torch.float8_e4m3fn, False),
}

#: Products whose result (or input) is subnormal in the format: (format, what, a, b). A matrix product
#: (a I) (b 1) puts a * b in every entry, through the same kernels (tensor cores on a GPU) as any other.
#: float16's "subnormal result" 2^-20 is a normal float32 number: in a float32-accumulating tensor core it tests
#: only the conversion of the result into float16. The other "subnormal product"s are subnormal in float32 too.
SUBNORMAL_PROBES = [
    ("float16", "subnormal input", 2.0**-20, 1.0),
    ("float16", "subnormal result", 2.0**-10, 2.0**-10),
    ("bfloat16", "subnormal input", 2.0**-130, 1.0),
    ("bfloat16", "subnormal product", 2.0**-65, 2.0**-65),
    ("float32", "subnormal input", 2.0**-130, 1.0),
    ("float32", "subnormal product", 2.0**-70, 2.0**-70),
    ("tf32", "subnormal input", 2.0**-130, 1.0),
    ("tf32", "subnormal product", 2.0**-70, 2.0**-70),
    ("float8_e4m3fn", "subnormal input", 2.0**-8, 1.0),
    ("float8_e4m3fn", "subnormal product", 2.0**-70, 2.0**-70),  # operands 1 in float8, the scales carry a and b
]


# ----------------------------------------------------------------------------------------------------------
# The machine
# ----------------------------------------------------------------------------------------------------------

def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_smi(field: str) -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.splitlines()[0].strip() if done.returncode == 0 and done.stdout.strip() else None


def machine(device: torch.device) -> dict:
    """Where the run happened: device, driver, library versions, CPU, date and commit."""
    info = {
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_threads": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
    }
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        info["commit"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), driver=_nvidia_smi("driver_version"))
    else:
        info.update(device=info["cpu"], capability=None, memory_gib=None, driver=None)
    return info


def slug(name: str) -> str:
    """A file name for a device name: ``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# ----------------------------------------------------------------------------------------------------------
# The hardware measurements
# ----------------------------------------------------------------------------------------------------------

@contextmanager
def tf32(allowed: bool):
    """Allow or forbid TF32 in float32 matrix products on CUDA (no effect elsewhere), then restore."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def has_fp8(device: torch.device) -> bool:
    """Whether this device multiplies float8 matrices: CUDA from compute capability 8.9 (Ada, Hopper), and the
    CPU kernel of ``torch._scaled_mm``."""
    return device.type == "cpu" or (device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9))


def _fp8_matmul(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor) -> torch.Tensor:
    # torch._scaled_mm wants the second operand column-major and the scales as float32 tensors on the device,
    # made once by the caller (a copy to the GPU inside a timed call would be timed too).
    return torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=torch.float32)


def _scale(value: float, device: torch.device) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32, device=device)


def matmul_throughput(device: torch.device, sizes: tuple[int, ...], repeat: int) -> list[dict]:
    """TFLOPS of an n x n product for every format of :data:`MATMUL_FORMATS` and every n (2 n^3 operations)."""
    rows = []
    for name, (dtype, allow) in MATMUL_FORMATS.items():
        if dtype == torch.float8_e4m3fn and not has_fp8(device):
            rows.append({"format": name, "n": None, "tflops": None, "note": "no float8 matrix product on this device"})
            continue
        for n in sizes:
            with tf32(allow):
                if dtype == torch.float8_e4m3fn:
                    gen = torch.Generator().manual_seed(0)
                    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
                    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype).t().contiguous().t()
                    one = _scale(1.0, device)
                    seconds = precision.time_call(lambda a=a, b=b, one=one: _fp8_matmul(a, b, one, one), repeat=repeat,
                                                  warmup=1, device=device)
                    flops = 2.0 * n**3 / seconds
                else:
                    flops = precision.matmul_throughput(n, name=str(dtype).removeprefix("torch."), device=device,
                                                        repeat=repeat)
            rows.append({"format": name, "n": n, "tflops": flops / 1e12})
    return rows


def training_steps(device: torch.device, configs: dict[str, dict], repeat: int, cpu_threads: int) -> list[dict]:
    """Milliseconds of one SGD step of chapter 12's sigmoid network on the CPU and on ``device``, per size."""
    rows = []
    saved = torch.get_num_threads()
    for size, cfg in configs.items():
        row = {"size": size, **cfg, "cpu_threads": cpu_threads}
        torch.set_num_threads(cpu_threads)
        row["cpu_ms"] = 1e3 * training_step_seconds("cpu", repeat=repeat, **cfg)
        torch.set_num_threads(saved)
        if device.type != "cpu":
            row[f"{device.type}_ms"] = 1e3 * training_step_seconds(str(device), repeat=repeat, **cfg)
            row["speedup"] = row["cpu_ms"] / row[f"{device.type}_ms"]
        rows.append(row)
    return rows


def _probe(name: str, what: str, a: float, b: float, n: int, device: torch.device) -> dict:
    """One matrix product (a I)(b 1) in format ``name``: is the subnormal result kept, flushed or changed?"""
    dtype, allow = MATMUL_FORMATS[name]
    eye = torch.eye(n, device=device)
    ones = torch.ones(n, n, device=device)
    col = torch.ones(n, n, device=device, dtype=dtype).t().contiguous().t() if dtype == torch.float8_e4m3fn else None
    with tf32(allow):
        if dtype == torch.float8_e4m3fn and what == "subnormal product":
            # float8 cannot hold a factor whose square is subnormal in float32: the scales carry a and b
            got = _fp8_matmul(eye.to(dtype), col, _scale(a, device), _scale(b, device))
            out_dtype = torch.float32
        elif dtype == torch.float8_e4m3fn:
            got = _fp8_matmul((a * eye).to(dtype), (b * col.float()).to(dtype).t().contiguous().t(),
                              _scale(1.0, device), _scale(1.0, device))
            out_dtype = torch.float32
        else:
            got = (a * eye).to(dtype) @ (b * ones).to(dtype)
            out_dtype = dtype
    value = float(got[0, 0])
    exact = float(torch.tensor(a * b, dtype=torch.float64).to(out_dtype))
    if exact == 0.0:
        raise ValueError(f"probe {name} {a} x {b}: the exact product is not representable in {out_dtype}")
    verdict = "kept" if value == exact else ("flushed to zero" if value == 0.0 else "changed")
    return {"format": name, "a": a, "b": b, "exact": exact, "got": value, "verdict": verdict}


def tf32_used(n: int, device: torch.device) -> bool:
    """Whether a float32 n x n product with TF32 allowed really ran in TF32: (1 + 2^-12) I times 1 is exactly
    1 + 2^-12 in float32, and exactly 1 when the inputs are cut to TF32's 10 fraction bits. cuBLAS may choose a
    kernel without TF32 for small products, so a subnormal probe or a first zero is read as TF32's only if this
    is True at its size."""
    a = (1.0 + 2.0**-12) * torch.eye(n, device=device)
    with tf32(True):
        return float((a @ torch.ones(n, n, device=device))[0, 0]) == 1.0


def underflow(device: torch.device, chain: dict, probe_n: int) -> dict:
    """Underflow on ``device`` beside the CPU: powers of 1/4, matrix-product probes, a deep network's first zero.

    The powers of 1/4 go through PyTorch's elementwise kernels, which compute float16 and bfloat16 in float32 and
    round, and emulate float8: on a GPU they test the conversions and its float32 subnormal handling, not tensor
    cores, and will very likely match the CPU. The matrix-product probes and the network are what reach the
    tensor cores; ``tf32_used`` records whether TF32 really ran at the probes' and the network's sizes."""
    out: dict = {"powers": [], "probes": [], "chain": dict(chain), "chain_first_zero": [],
                 "tf32_used": {str(n): tf32_used(n, device) for n in dict.fromkeys([probe_n, chain["width"]])}}
    for name in precision.FORMATS:
        row = {"format": name}
        for where in dict.fromkeys(["cpu", str(device)]):
            subnormal, zero = precision.underflow_steps(0.25, fmt=name, device=where)
            row[where] = {"first_subnormal": subnormal, "first_zero": zero}
        out["powers"].append(row)
    for name, what, a, b in SUBNORMAL_PROBES:
        if MATMUL_FORMATS[name][0] == torch.float8_e4m3fn and not has_fp8(device):
            continue
        out["probes"].append({"what": what, **_probe(name, what, a, b, probe_n, device)})
    torch.manual_seed(0)
    net = models.mlp(in_features=16, out_features=2, depth=chain["depth"], width=chain["width"],
                     activation="sigmoid", init="xavier")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(chain["batch"], 16, generator=gen)
    y = torch.randint(0, 2, (chain["batch"],), generator=gen)
    for name in [*precision.COMPUTED, "tf32"]:
        fmt = "float32" if name == "tf32" else name
        row = {"format": name}
        for where in dict.fromkeys(["cpu", str(device)]):
            with tf32(name == "tf32"):
                norms = precision.layer_grad_norms(net, x, y, name=fmt, device=where)
            row[where] = precision.zero_depth(norms)
        out["chain_first_zero"].append(row)
    return out


def grad_scaler(device: torch.device, amp: dict) -> dict:
    """Chapter 12's autocast experiment on ``device`` and on the CPU: exactly-zero weight gradients and first zero."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(amp["batch"], 16, generator=gen)
    y = torch.randint(0, 2, (amp["batch"],), generator=gen)
    rows = []
    for where in dict.fromkeys(["cpu", str(device)]):
        torch.manual_seed(0)
        net = models.mlp(in_features=16, out_features=2, depth=amp["depth"], width=amp["width"],
                         activation="sigmoid", init="xavier").to(where)
        for name, init_scale in (("float16", None), ("float16", 2.0**16), ("bfloat16", None)):
            norms, scale = precision.amp_grad_norms(net, x.to(where), y.to(where), name=name, init_scale=init_scale,
                                                    device=where)
            rows.append({"device": where, "autocast": name, "init_scale": init_scale, "scale_after": scale,
                         "zero_gradients": sum(g == 0 for g in norms), "weights": len(norms),
                         "first_zero": precision.zero_depth(norms)})
    return {"network": dict(amp), "runs": rows}


# ----------------------------------------------------------------------------------------------------------
# The chapters' heaviest experiments
# ----------------------------------------------------------------------------------------------------------

def heaviest_cells(path: Path) -> tuple[list[nbformat.NotebookNode], int]:
    """A chapter's code cells and the index of its heaviest experiment (the one cell starting with the marker)."""
    marker = HEAVIEST[path.stem][0]
    code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    hits = [i for i, c in enumerate(code) if c.source.startswith(marker)]
    if len(hits) != 1:
        raise ValueError(f"{path.name}: {len(hits)} code cells start with the heaviest marker {marker!r}; need 1")
    return code, hits[0]


PROBE_SIZES = ("import json as _json\n"
               "print(_json.dumps({'scale': vg.scale(), 'device': str(DEVICE), 'sizes': SIZES}, default=str))")
PROBE_MEMORY = ("import torch as _torch\n"
                "print(_torch.cuda.max_memory_allocated() if _torch.cuda.is_available() else -1)")


def chapter_notebook(path: Path) -> tuple[nbformat.NotebookNode, int]:
    """The notebook that runs a chapter's heaviest experiment: setup, a probe of its sizes, the slice the
    experiment needs, the experiment, a probe of peak GPU memory. Returns it and the experiment's index."""
    code, target = heaviest_cells(path)
    cells = []
    for i, source in slice_cells([c.source for c in code[: target + 1]], target):
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["chapter_cell"] = i
        cells.append(cell)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [cells[0], nbformat.v4.new_code_cell(PROBE_SIZES), *cells[1:], nbformat.v4.new_code_cell(PROBE_MEMORY)]
    return nb, len(nb.cells) - 2


def _text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and out.get("name") == "stdout":
            parts.append(out["text"])
        elif "text/plain" in out.get("data", {}):
            parts.append(out["data"]["text/plain"] + "\n")
    return "".join(parts)


def run_chapter(path: Path, *, scale: str, device: str, limit: float, keep: int = 4000) -> dict:
    """Run a chapter's heaviest experiment (:func:`chapter_notebook`) in a fresh kernel under
    ``VANISHING_SCALE=scale`` and ``VANISHING_DEVICE=device``, stopping it after ``limit`` seconds in all.

    Returns the status (``ok``, ``timeout``, ``error``), seconds in all and for the experiment's cell, the
    sizes the chapter used, peak GPU memory, and the experiment's printed output (its last ``keep`` characters).
    """
    nb, target = chapter_notebook(path)
    row: dict = {"chapter": path.stem, "cell": HEAVIEST[path.stem][0], "chapter_cell": nb.cells[target].metadata[
        "chapter_cell"], "scale": scale, "device": device, "limit_s": round(limit, 1)}
    saved = dict(os.environ)
    # no progress bars: the experiment's printed output is recorded
    os.environ.update({vg.SCALE_ENV: scale, vg.DEVICE_ENV: device, "VANISHING_QUIET": "1"})
    os.environ.pop("MPLBACKEND", None)
    client = NotebookClient(nb, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    start = time.monotonic()
    status, error = "ok", None
    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                left = limit - (time.monotonic() - start)
                if left < 1:
                    raise CellTimeoutError(f"no time left before cell {index}")
                client.timeout = math.floor(left)  # whole seconds, never past the limit
                began = time.monotonic()
                client.execute_cell(cell, index)
                if index == target:
                    row["cell_s"] = round(time.monotonic() - began, 2)
    except (CellTimeoutError, TimeoutError):
        status = "timeout"
    except (CellExecutionError, DeadKernelError) as exc:
        status, error = "error", str(exc).strip().splitlines()[-1][:500]
    finally:
        os.environ.clear()
        os.environ.update(saved)
    row.update(status=status, seconds=round(time.monotonic() - start, 2), error=error)
    sizes = _text(nb.cells[1]).strip()
    row["sizes"] = json.loads(sizes)["sizes"] if sizes.startswith("{") else None
    memory = _text(nb.cells[-1]).strip()
    row["peak_gpu_gib"] = round(int(memory) / 2**30, 2) if memory.lstrip("-").isdigit() and int(memory) >= 0 else None
    row["output"] = _text(nb.cells[target])[-keep:]
    return row


def run_chapter_or_smaller(stem: str, *, scale: str, device: str, chapters_left: int, seconds_left, min_s: float
                           ) -> list[dict]:
    """Rows for one chapter: its heaviest experiment at ``scale`` in its share of the time left (``seconds_left()``
    shared among ``chapters_left`` chapters, this one included, less :data:`CHAPTER_MARGIN_S`), and if that times
    out at ``full``, a second run at ``small`` in a share of what is left then. A share under ``min_s`` is
    recorded as skipped."""
    rows = []
    for attempt in dict.fromkeys([scale, "small"]):
        share = seconds_left() / chapters_left - CHAPTER_MARGIN_S
        if share < min_s:
            rows.append({"chapter": stem, "cell": HEAVIEST[stem][0], "scale": attempt, "status": "skipped",
                         "limit_s": round(max(share, 0), 1), "note": "no time left in the budget"})
            break
        row = run_chapter(ROOT / "chapters" / f"{stem}.ipynb", scale=attempt, device=device, limit=share)
        if attempt != scale:
            row["fallback_for"] = scale
        rows.append(row)
        if row["status"] != "timeout":
            break
    return rows


# ----------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes on the CPU: the test of this script")
    parser.add_argument("--out", type=Path, help="results file (default on a GPU: bench/results/<gpu name>.json)")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run (default 480)")
    parser.add_argument("--chapters", nargs="*", default=None,
                        help="chapter numbers or stems whose heaviest experiment runs (default all; none: --chapters)")
    args = parser.parse_args(argv)
    start = time.monotonic()

    mode = "quick" if args.quick else "gpu"
    sizes = SIZES[mode]
    if args.quick:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        parser.error("no CUDA device here: the runbook measures a GPU (use --quick for the CPU test)")
    else:
        device = torch.device("cuda")
    out = args.out
    if out is None:
        if args.quick:
            parser.error("--quick needs --out: a CPU run must not land in bench/results/")
        out = RESULTS / f"{slug(torch.cuda.get_device_name(device))}.json"
    if args.quick and RESULTS.resolve() in out.resolve().parents:
        parser.error(f"--out {out}: bench/results/ holds GPU results only")
    chapters = sorted(HEAVIEST) if args.chapters is None else [
        next((s for s in HEAVIEST if s == c or s.startswith(f"{c}_")), c) for c in args.chapters]
    unknown = [c for c in chapters if c not in HEAVIEST]
    if unknown:
        parser.error(f"--chapters: unknown {unknown}; known: {', '.join(sorted(HEAVIEST))}")

    vg.seed(0)
    record: dict = {"schema": 1, "quick": args.quick, "budget_s": args.budget, "machine": machine(device),
                    "sections_s": {}}

    def write() -> None:
        record["elapsed_s"] = round(time.monotonic() - start, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1) + "\n")

    def section(name: str, fn, *fargs) -> None:
        began = time.monotonic()
        record[name] = fn(*fargs)
        record["sections_s"][name] = round(time.monotonic() - began, 1)
        print(f"{name}: {record['sections_s'][name]:.1f} s", flush=True)
        write()

    cpu_threads = 1 if args.quick else (os.cpu_count() or 1)
    section("matmul", matmul_throughput, device, sizes["matmul"], sizes["repeat"])
    section("training_step", training_steps, device, sizes["steps"], sizes["step_repeat"], cpu_threads)
    section("underflow", underflow, device, sizes["chain"], sizes["probe_n"])
    section("grad_scaler", grad_scaler, device, sizes["amp"])

    record["chapters"] = []
    scale = "small" if args.quick else "full"
    order = sorted(chapters, key=lambda c: HEAVIEST[c][1])  # cheapest first: time left over goes to the heavy ones
    for k, stem in enumerate(order):
        for row in run_chapter_or_smaller(stem, scale=scale, device=device.type, chapters_left=len(order) - k,
                                          seconds_left=lambda: args.budget - (time.monotonic() - start) - 5.0,
                                          min_s=sizes["min_chapter_s"]):
            print(f"{stem} ({row.get('scale', scale)}): {row['status']} ({row.get('seconds', 0):.0f} s of "
                  f"{row['limit_s']:.0f})", flush=True)
            record["chapters"].append(row)
            write()
    record["complete"] = True
    write()
    print(f"wrote {out} in {record['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
