"""Numbers on hardware: floating-point formats, where a shrinking gradient underflows, and how
fast a machine multiplies.

A vanishing gradient is a mathematical fact; whether it becomes *exactly
zero* is a fact about the number format the hardware computes in. This
module makes both measurable:

* :func:`format_info` - range and resolution of float16, bfloat16, float32, float64;
* :func:`power_underflow_depth` - how many multiplications by a factor below one
  a format survives before the product is exactly zero (with or without
  subnormals, i.e. with or without flush-to-zero);
* :func:`layer_grad_norms` - the per-layer gradient of a deep sigmoid network
  computed in a chosen format, optionally with static loss scaling;
* :func:`safe_norm` - the measurement core's norm (:func:`vanishing.probes.safe_norm`), which does
  not itself underflow (``torch.norm`` of a float32 vector of 1e-30s is 0: the squares underflow);
* :func:`zero_depth` - how far from the output the first exactly-zero gradient sits;
* :func:`time_call` and :func:`matmul_throughput` - wall-clock timing of a
  training step or a matrix product on a device (machine-dependent by nature).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import nn

from .probes import safe_norm

__all__ = [
    "FORMATS",
    "dtype_of",
    "format_info",
    "power_underflow_depth",
    "layer_grad_norms",
    "zero_depth",
    "safe_norm",
    "time_call",
    "matmul_throughput",
]

#: The floating-point formats the book compares, by name.
FORMATS: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def dtype_of(name: str) -> torch.dtype:
    """The torch dtype for a format name in :data:`FORMATS`."""
    if name not in FORMATS:
        raise ValueError(f"format={name!r} is unknown; allowed: {', '.join(FORMATS)}")
    return FORMATS[name]


def format_info(name: str) -> dict[str, float | int | str]:
    """Bits, precision and range of format ``name``.

    Returns ``name``, ``bits``, ``mantissa_bits`` (stored fraction bits),
    ``eps`` (spacing of numbers just above 1), ``smallest_normal``,
    ``smallest_subnormal`` (the smallest positive number at all: below it a
    result rounds to zero) and ``max``.
    """
    info = torch.finfo(dtype_of(name))
    mantissa = round(-torch.log2(torch.tensor(info.eps, dtype=torch.float64)).item())
    return {
        "name": name,
        "bits": info.bits,
        "mantissa_bits": mantissa,
        "eps": float(info.eps),
        "smallest_normal": float(info.smallest_normal),
        # The subnormals are spaced eps * smallest_normal apart, starting there.
        "smallest_subnormal": float(info.smallest_normal) * float(info.eps),
        "max": float(info.max),
    }


def power_underflow_depth(
    factor: float, name: str, *, flush_to_zero: bool = False, max_depth: int = 100_000
) -> int:
    """The smallest ``n`` for which multiplying 1 by ``factor`` ``n`` times, in format ``name``,
    gives exactly 0.

    Each product is rounded to the format, as a chain of layers would round
    it. ``flush_to_zero=True`` emulates hardware that replaces every subnormal
    result by zero (the FTZ/DAZ modes of CPUs and of fast-math GPU code), so
    the chain dies as soon as it drops below the smallest *normal* number.
    Raises ``ValueError`` if ``factor`` is not in (0, 1) or nothing
    underflows within ``max_depth`` steps.
    """
    if not 0.0 < factor < 1.0:
        raise ValueError(f"factor must be in (0, 1), got {factor!r}")
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1:
        raise ValueError(f"max_depth must be a positive int, got {max_depth!r}")
    dtype = dtype_of(name)
    tiny = torch.finfo(dtype).smallest_normal
    value = torch.tensor(1.0, dtype=dtype)
    step = torch.tensor(factor, dtype=dtype)
    if step == 0 or step == 1:
        raise ValueError(
            f"factor={factor!r} rounds to {float(step)} in {name}; "
            "pick a factor the format can hold"
        )
    for n in range(1, max_depth + 1):
        value = value * step
        if flush_to_zero and abs(float(value)) < tiny:
            value = torch.zeros((), dtype=dtype)
        if value == 0:
            return n
    raise ValueError(
        f"no underflow within max_depth={max_depth} multiplications by {factor} in {name}"
    )


def layer_grad_norms(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    name: str = "float32",
    loss_scale: float = 1.0,
) -> list[float]:
    """Norm of dLoss/dW for every weight matrix of ``model``, computed entirely in format ``name``.

    A copy of the model and the inputs are cast to the format, the loss
    (cross-entropy, evaluated in float32 from the low-precision logits) is
    multiplied by ``loss_scale`` before the backward pass, and each gradient
    is divided by ``loss_scale`` afterwards *in float64* (norms by :func:`safe_norm`):
    this is static loss scaling (Micikevicius et al. 2018). A gradient that underflowed during
    the backward pass stays exactly zero after unscaling. Input layer first.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not loss_scale > 0:
        raise ValueError(f"loss_scale must be positive, got {loss_scale!r}")
    dtype = dtype_of(name)
    clone = copy.deepcopy(model).to(dtype)
    weights = [p for p in clone.parameters() if p.dim() >= 2]
    if not weights:
        raise ValueError("model has no weight matrices (parameters with 2+ dimensions)")
    logits = clone(inputs.to(dtype))
    loss = nn.functional.cross_entropy(logits.float(), targets) * loss_scale
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


def time_call(
    fn: Callable[[], object],
    *,
    repeat: int = 10,
    warmup: int = 2,
    device: torch.device | str = "cpu",
) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeat`` runs after ``warmup`` untimed ones.

    On CUDA the device is synchronized around each run, because kernels are
    launched asynchronously and an unsynchronized timer measures only the launch.
    The result depends on the machine and its load: never store it as a fixed number.
    """
    for label, value in (("repeat", repeat), ("warmup", warmup)):
        if (
            isinstance(value, bool) or not isinstance(value, int)
            or value < (1 if label == "repeat" else 0)
        ):
            raise ValueError(
                f"{label} must be an int >= {1 if label == 'repeat' else 0}, got {value!r}"
            )
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def matmul_throughput(
    n: int, *, name: str = "float32", device: torch.device | str = "cpu", repeat: int = 5
) -> float:
    """Measured floating-point operations per second of an ``n`` x ``n`` matrix product in
    format ``name``.

    Counts ``2 n^3`` operations per product (one multiply and one add per term),
    the convention vendors use for peak figures. Machine-dependent.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    dtype = dtype_of(name)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    seconds = time_call(lambda: a @ b, repeat=repeat, warmup=1, device=device)
    return 2.0 * n**3 / seconds
