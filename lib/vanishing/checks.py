"""The argument checks every module of the library shares: an int, a number, a choice, a model.

A count, a learning rate, an option name or a model that is wrong should fail where
it is passed, with a message that names the parameter first and then what is allowed,
rather than deep inside torch. ``True`` is refused where a number is expected although
it is an ``int`` in Python: ``steps=True`` is a mistake, not one step. A count must be a
Python ``int``; a number may be any real number, NumPy scalars included, and comes back
as a Python float, the value to pass on.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T")


def integer(name: str, value: object, low: int = 1, high: int | None = None) -> int:
    """Return ``value`` if it is an int with ``low <= value <= high`` (``high=None``: no upper
    bound); otherwise raise ValueError naming ``name`` and the allowed range."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        if high is not None:
            allowed = f"an int in [{low}, {high}]"
        else:
            allowed = "a positive int" if low == 1 else f"an int >= {low}"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def number(
    name: str, value: object, low: float = 0.0, high: float = math.inf, *,
    low_ok: bool = False, high_ok: bool = True, allowed: str = "a positive number",
) -> float:
    """Return ``float(value)`` if it is a real number (an int, a float or a NumPy scalar; not a
    bool, not a tensor) between ``low`` and ``high``; otherwise raise ValueError naming
    ``name`` and ``allowed`` (the words for the range).

    ``low`` itself is allowed only with ``low_ok``, ``high`` only with ``high_ok``: the
    defaults accept any positive number, infinity included. NaN is always refused.
    """
    # nan (for a bool, a string, a tensor...) fails every comparison below
    x = math.nan
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        x = float(value)
    if not ((x >= low if low_ok else x > low) and (x <= high if high_ok else x < high)):
        hint = " (a tensor: pass float(t))" if isinstance(value, torch.Tensor) else ""
        raise ValueError(f"{name} must be {allowed}, got {value!r}{hint}")
    return x


def choice(name: str, value: T, allowed: Iterable[object], extra: str = "") -> T:
    """Return ``value`` if it is one of ``allowed``; otherwise raise ValueError naming ``name``
    and listing what is allowed, as one would write it (``extra`` ends the list, e.g.
    ``" or a callable"`` where the caller also takes a function)."""
    allowed = tuple(allowed)
    # identity or equality; an array or tensor, whose == is elementwise, is simply not allowed
    if not any(value is a or (isinstance(value, (str, int, float)) and value == a)
               for a in allowed):
        raise ValueError(
            f"{name}={value!r} is unknown; allowed: {', '.join(map(repr, allowed))}{extra}"
        )
    return value


def module(model: object, name: str = "model") -> nn.Module:
    """Return ``model`` if it is a ``torch.nn.Module``; otherwise raise ValueError naming it."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    return model
