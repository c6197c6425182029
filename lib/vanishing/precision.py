"""Number formats: where a shrinking product underflows, and what a format does on hardware.

A vanishing gradient is a mathematical fact; whether it becomes *exactly zero*
is a fact about the number format the hardware computes in. A gradient that
passes through ``k`` layers is (roughly) a product of ``k`` factors; in a
floating-point format the product first leaves the normal range (becoming
*subnormal*, with fewer significant bits) and then rounds to exactly zero. This
module measures where, from the one table of formats :data:`FORMATS`:

* :func:`format_info` - a format's bit layout, resolution and range;
* :func:`repeated_product` - ``factor**k`` for ``k = 0..steps``, rounded after every
  multiplication in the format, as a chain of layer-by-layer products would be;
* :func:`underflow_steps` - the one underflow counter: the first ``k`` whose product is
  subnormal (where hardware that flushes subnormals to zero already has zero) and the
  first whose product is exactly zero;
* :func:`layer_grad_norms` - the per-layer gradient of a network computed in a chosen
  format, optionally with static loss scaling, and :func:`zero_depth`, how far from
  the output the first exactly-zero gradient sits;
* :func:`amp_grad_norms` - the same under ``torch.autocast`` (mixed precision), with or
  without the dynamic ``torch.amp.GradScaler``;
* :func:`safe_norm` - the measurement core's norm (:func:`vanishing.probes.safe_norm`),
  which does not itself underflow;
* :func:`time_call` and :func:`matmul_throughput` - wall-clock timing of a training step
  or a matrix product on a device (machine-dependent by nature).

The computing functions take a ``device``: the same measurement runs on a CPU (the
book's stored outputs) and on a GPU (``bench/runbook.py``), where the arithmetic is
the GPU's own: its kernels decide whether subnormal numbers survive.

torch (up to at least 2.13) cannot *multiply* float8 tensors on a CPU, only cast
to and from them. The product of two float8 numbers has at most 8 significant
bits and fits a float32 exactly, so multiplying in float32 and rounding the
result once to float8 gives the correctly rounded float8 product: that is how
the float8 formats are computed here (``format_info(...)["native_mul"]`` says
which formats were multiplied natively; :data:`COMPUTED` lists them).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .checks import choice, integer, module, number
from .probes import safe_norm

__all__ = [
    "FORMATS",
    "COMPUTED",
    "dtype_of",
    "format_info",
    "repeated_product",
    "underflow_steps",
    "layer_grad_norms",
    "zero_depth",
    "amp_grad_norms",
    "safe_norm",
    "synchronizer",
    "time_call",
    "matmul_throughput",
]

#: Floating-point formats, widest first: name -> (torch dtype, total bits).
FORMATS: dict[str, tuple[torch.dtype, int]] = {
    "float64": (torch.float64, 64),
    "float32": (torch.float32, 32),
    "bfloat16": (torch.bfloat16, 16),
    "float16": (torch.float16, 16),
    "float8_e5m2": (torch.float8_e5m2, 8),
    "float8_e4m3fn": (torch.float8_e4m3fn, 8),
}


def _check_format(fmt: object, param: str = "fmt") -> tuple[torch.dtype, int]:
    return FORMATS[str(choice(param, fmt, FORMATS))]


def _native_mul(dtype: torch.dtype) -> bool:
    # Whether torch multiplies this dtype on the CPU (float8 raises NotImplementedError).
    try:
        _ = torch.ones(1, dtype=dtype) * torch.ones(1, dtype=dtype)
    except (NotImplementedError, RuntimeError):
        return False
    return True


#: The formats torch multiplies natively on a CPU, narrowest first: the ones a network can be
#: trained in there (float16, bfloat16, float32, float64).
COMPUTED: tuple[str, ...] = tuple(
    name for name in reversed(FORMATS) if _native_mul(FORMATS[name][0])
)


def format_info(fmt: str) -> dict[str, float | int | bool | str]:
    """Describe a format: its bits, exponent and mantissa widths and its range.

    Returns ``name``, ``bits``, ``exponent_bits``, ``mantissa_bits`` (stored
    fraction bits), ``smallest_normal``, ``smallest_subnormal`` (the smallest
    positive number at all: ``smallest_normal * eps``), ``eps`` (spacing above
    1), ``max`` and ``native_mul`` (whether torch multiplies it on the CPU).
    """
    dtype, bits = _check_format(fmt)
    fi = torch.finfo(dtype)
    mantissa = int(round(-math.log2(fi.eps)))
    return {
        "name": fmt,
        "bits": bits,
        "exponent_bits": bits - 1 - mantissa,
        "mantissa_bits": mantissa,
        "smallest_normal": float(fi.smallest_normal),
        "smallest_subnormal": float(fi.smallest_normal) * float(fi.eps),
        "eps": float(fi.eps),
        "max": float(fi.max),
        "native_mul": _native_mul(dtype),
    }


def repeated_product(
    factor: float, steps: int, *, fmt: str = "float32", device: torch.device | str = "cpu"
) -> np.ndarray:
    """``factor**k`` for ``k = 0, 1, ..., steps``, multiplied one factor at a time in format
    ``fmt``.

    The factor itself is first rounded to the format (0.25 is exact in all of
    them; 0.3 is not). Each partial product is rounded to the format, as in a
    backward pass that multiplies one layer's factor after another, on ``device``.
    Returns a float64 NumPy array of length ``steps + 1`` holding the rounded values.
    """
    dtype, _ = _check_format(fmt)
    number("factor", factor, -math.inf, high_ok=False, allowed="a finite number")
    integer("steps", steps, 0)
    native = _native_mul(dtype)
    work = dtype if native else torch.float32
    dev = torch.device(device)
    f = torch.tensor(float(factor), dtype=torch.float64).to(dtype).to(work).to(dev)
    p = torch.tensor(1.0, dtype=dtype).to(work).to(dev)
    values = [p]
    for _ in range(steps):
        p = p * f
        if not native:
            # float32 holds the product of two float8 numbers exactly: one rounding is correct
            # rounding.
            p = p.to(dtype).to(work)
        values.append(p)
    # One copy to the host at the end (float64 holds every format's values exactly).
    return torch.stack(values).to(torch.float64).cpu().numpy()


def underflow_steps(
    factor: float,
    *,
    fmt: str = "float32",
    max_steps: int = 2000,
    device: torch.device | str = "cpu",
) -> tuple[int | None, int | None]:
    """First number of factors ``k`` at which ``factor**k`` is subnormal, and first at which it
    is exactly 0.

    Computed with :func:`repeated_product` on ``device``; ``factor`` must lie strictly
    between 0 and 1 (a shrinking product). Either entry is ``None`` when it
    does not happen within ``max_steps`` factors. A layered network of depth
    ``L`` puts ``L - 1`` such factors between its last and its first layer.
    On hardware that flushes subnormal results to zero (the FTZ/DAZ modes of
    CPUs, fast-math GPU code) the product is zero from the first entry on.
    """
    _check_format(fmt)
    number("factor", factor, high=1.0, high_ok=False, allowed="a number strictly between 0 and 1")
    integer("max_steps", max_steps)
    values = repeated_product(factor, max_steps, fmt=fmt, device=device)
    normal = format_info(fmt)["smallest_normal"]
    sub = np.flatnonzero((values > 0) & (values < normal))
    zero = np.flatnonzero(values == 0)
    return (int(sub[0]) if len(sub) else None, int(zero[0]) if len(zero) else None)


def dtype_of(name: str) -> torch.dtype:
    """The torch dtype for a format name in :data:`FORMATS`."""
    return _check_format(name, "name")[0]


def layer_grad_norms(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    name: str = "float32",
    loss_scale: float = 1.0,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Norm of dLoss/dW for every weight matrix of ``model``, computed entirely in format ``name``.

    A copy of the model and the inputs are cast to the format, the loss
    (cross-entropy, evaluated in float32 from the low-precision logits) is
    multiplied by ``loss_scale`` before the backward pass, and each gradient
    is divided by ``loss_scale`` afterwards *in float64* (norms by :func:`safe_norm`):
    this is static loss scaling (Micikevicius et al. 2018). A gradient that underflowed during
    the backward pass stays exactly zero after unscaling. Input layer first. The copy, the
    inputs and the targets are moved to ``device`` (the model itself stays where it is).
    """
    module(model)
    number("loss_scale", loss_scale)
    dtype = dtype_of(name)
    clone = copy.deepcopy(model).to(device=device, dtype=dtype)
    weights = [p for p in clone.parameters() if p.dim() >= 2]
    if not weights:
        raise ValueError("model has no weight matrices (parameters with 2+ dimensions)")
    logits = clone(inputs.to(device=device, dtype=dtype))
    loss = nn.functional.cross_entropy(logits.float(), targets.to(device)) * loss_scale
    grads = torch.autograd.grad(loss, weights)
    return [safe_norm(g) / loss_scale for g in grads]


def zero_depth(norms: list[float]) -> int | None:
    """Counting layers back from the output (output layer = 1), the first whose gradient is
    exactly zero.

    ``None`` when no gradient is zero. ``norms`` lists the layers input first,
    as :func:`layer_grad_norms` returns them.
    """
    if len(norms) == 0:
        raise ValueError("norms must list at least one layer")
    for back, value in enumerate(reversed(list(norms)), start=1):
        if value == 0.0:
            return back
    return None


def amp_grad_norms(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    name: str = "float16",
    init_scale: float | None = None,
    device: torch.device | str = "cpu",
) -> tuple[list[float], float | None]:
    """Weight-gradient norms of one mixed-precision backward pass, and the loss scale after it.

    The forward pass runs under ``torch.autocast`` in format ``name`` (``"float16"`` or
    ``"bfloat16"``): matrix products in that format, weights and their gradients in float32.
    With ``init_scale`` a ``torch.amp.GradScaler`` scales the loss, unscales the gradients
    (``unscale_``), and takes a step at learning rate 0, so the weights stay as they are and
    the scaler's update (halve after an overflow, keep otherwise) can be read. Without it the
    loss is not scaled and the scale returned is ``None``. The model's gradients are
    overwritten; ``model``, ``inputs`` and ``targets`` must be on ``device``. Norms are
    :func:`safe_norm`, one per weight matrix, input layer first.
    """
    choice("name", name, ("float16", "bfloat16"), " (the autocast formats)")
    if init_scale is not None:
        number("init_scale", init_scale, allowed="a positive number or None")
    weights = [p for p in model.parameters() if p.dim() >= 2]
    if not weights:
        raise ValueError("model has no weight matrices (parameters with 2+ dimensions)")
    dev = torch.device(device)
    model.zero_grad()
    scaler = torch.amp.GradScaler(
        dev.type, init_scale=init_scale or 1.0, enabled=init_scale is not None
    )
    with torch.autocast(dev.type, dtype=dtype_of(name)):
        loss = nn.functional.cross_entropy(model(inputs), targets)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: look at the gradients only
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    norms = [safe_norm(w.grad) if w.grad is not None else 0.0 for w in weights]
    scaler.step(opt)
    scaler.update()
    return norms, (scaler.get_scale() if init_scale is not None else None)


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """A function that waits until ``device`` has finished all queued work (a no-op on the CPU).

    GPUs and other accelerators run kernels asynchronously: a call returns once the
    kernel is queued. Reading a clock without waiting first times the queueing.
    """
    dev = torch.device(device)
    if dev.type == "cpu":
        return lambda: None
    backend = getattr(torch, dev.type, None)
    if backend is None or not hasattr(backend, "synchronize"):
        raise ValueError(f"device={str(dev)!r}: torch has no synchronize() for {dev.type!r}")
    if dev.type == "mps":  # torch.mps.synchronize takes no device
        return backend.synchronize
    return lambda: backend.synchronize(dev)


def time_call(
    fn: Callable[[], object],
    *,
    repeat: int = 10,
    warmup: int = 2,
    device: torch.device | str = "cpu",
) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeat`` runs after ``warmup`` untimed ones.

    On any device other than the CPU (CUDA, Apple MPS, Intel XPU) the device is
    synchronized before the clock is read, because kernels are launched
    asynchronously and an unsynchronized timer measures only the launch.
    The result depends on the machine and its load: never store it as a fixed number.
    """
    integer("repeat", repeat)
    integer("warmup", warmup, 0)
    sync = synchronizer(device)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median_high(times)


def matmul_throughput(
    n: int, *, name: str = "float32", device: torch.device | str = "cpu", repeat: int = 5
) -> float:
    """Measured floating-point operations per second of an ``n`` x ``n`` matrix product in
    format ``name``.

    Counts ``2 n^3`` operations per product (one multiply and one add per term),
    the convention vendors use for peak figures. Machine-dependent.
    """
    integer("n", n)
    dtype = dtype_of(name)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    seconds = time_call(lambda: a @ b, repeat=repeat, warmup=1, device=device)
    return 2.0 * n**3 / seconds
