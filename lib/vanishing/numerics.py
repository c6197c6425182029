"""Floating-point arithmetic of shrinking products: where a vanishing gradient becomes exactly zero.

A gradient that passes through ``k`` layers is (roughly) a product of ``k``
factors. On paper the product of numbers below one only gets small; in a
floating-point format it first leaves the normal range (becoming *subnormal*,
with fewer significant bits) and then rounds to exactly zero. The depth at
which that happens depends on the format, which is what this module measures:

* :data:`FORMATS` - the floating-point formats torch offers on a CPU;
* :func:`format_info` - a format's bit layout and smallest normal/subnormal numbers;
* :func:`repeated_product` - ``factor**k`` for ``k = 0..steps``, rounded after every
  multiplication in the format, exactly as a chain of layer-by-layer products would be;
* :func:`underflow_steps` - the first ``k`` whose product is subnormal, and the first
  whose product is exactly zero.

torch (up to at least 2.13) cannot *multiply* float8 tensors on a CPU, only cast
to and from them. The product of two float8 numbers has at most 8 significant
bits and fits a float32 exactly, so multiplying in float32 and rounding the
result once to float8 gives the correctly rounded float8 product: that is how
the float8 formats are computed here (``format_info(...)["native_mul"]`` says
which formats were multiplied natively).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["FORMATS", "format_info", "repeated_product", "underflow_steps"]

#: Floating-point formats, widest first: name -> (torch dtype, total bits).
FORMATS: dict[str, tuple[torch.dtype, int]] = {
    "float64": (torch.float64, 64),
    "float32": (torch.float32, 32),
    "bfloat16": (torch.bfloat16, 16),
    "float16": (torch.float16, 16),
    "float8_e5m2": (torch.float8_e5m2, 8),
    "float8_e4m3fn": (torch.float8_e4m3fn, 8),
}


def _check_format(fmt: object) -> tuple[torch.dtype, int]:
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r} is unknown; allowed: {', '.join(FORMATS)}")
    return FORMATS[fmt]


def _native_mul(dtype: torch.dtype) -> bool:
    # Whether torch multiplies this dtype on the CPU (float8 raises NotImplementedError).
    try:
        _ = torch.ones(1, dtype=dtype) * torch.ones(1, dtype=dtype)
    except (NotImplementedError, RuntimeError):
        return False
    return True


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


def repeated_product(factor: float, steps: int, *, fmt: str = "float32") -> np.ndarray:
    """``factor**k`` for ``k = 0, 1, ..., steps``, multiplied one factor at a time in format
    ``fmt``.

    The factor itself is first rounded to the format (0.25 is exact in all of
    them; 0.3 is not). Each partial product is rounded to the format, as in a
    backward pass that multiplies one layer's factor after another. Returns a
    float64 NumPy array of length ``steps + 1`` holding the rounded values.
    """
    dtype, _ = _check_format(fmt)
    if (
        isinstance(factor, bool) or not isinstance(factor, (int, float))
        or not math.isfinite(factor)
    ):
        raise ValueError(f"factor must be a finite number, got {factor!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    native = _native_mul(dtype)
    work = dtype if native else torch.float32
    f = torch.tensor(float(factor), dtype=torch.float64).to(dtype).to(work)
    p = torch.tensor(1.0, dtype=dtype).to(work)
    out = np.empty(steps + 1)
    out[0] = float(p)
    for k in range(1, steps + 1):
        p = p * f
        if not native:
            # float32 holds the product of two float8 numbers exactly: one rounding is correct
            # rounding.
            p = p.to(dtype).to(work)
        out[k] = float(p)
    return out


def underflow_steps(
    factor: float, *, fmt: str = "float32", max_steps: int = 2000
) -> tuple[int | None, int | None]:
    """First number of factors ``k`` at which ``factor**k`` is subnormal, and first at which it
    is exactly 0.

    Computed with :func:`repeated_product`; ``factor`` must lie strictly
    between 0 and 1 (a shrinking product). Either entry is ``None`` when it
    does not happen within ``max_steps`` factors. A layered network of depth
    ``L`` puts ``L - 1`` such factors between its last and its first layer.
    """
    _check_format(fmt)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0.0 < factor < 1.0:
        raise ValueError(f"factor must be a number strictly between 0 and 1, got {factor!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    values = repeated_product(factor, max_steps, fmt=fmt)
    normal = format_info(fmt)["smallest_normal"]
    sub = np.flatnonzero((values > 0) & (values < normal))
    zero = np.flatnonzero(values == 0)
    return (int(sub[0]) if len(sub) else None, int(zero[0]) if len(zero) else None)
