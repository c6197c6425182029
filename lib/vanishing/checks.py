"""The argument checks every module of the library shares: an int, a number, a choice, a model.

A count, a learning rate, an option name or a model that is wrong should fail where
it is passed, with a message that names the parameter first and then what is allowed,
rather than deep inside torch. ``True`` is refused where a number is expected although
it is an ``int`` in Python: ``steps=True`` is a mistake, not one step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn


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
    """Return ``float(value)`` if it is an int or float between ``low`` and ``high``; otherwise
    raise ValueError naming ``name`` and ``allowed`` (the words for the range).

    ``low`` itself is allowed only with ``low_ok``, ``high`` only with ``high_ok``: the
    defaults accept any positive number, infinity included. NaN is always refused.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (value >= low if low_ok else value > low)
        or not (value <= high if high_ok else value < high)
    ):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def choice(name: str, value: object, allowed: Iterable[object], extra: str = "") -> None:
    """Raise ValueError unless ``value`` is one of ``allowed``; ``extra`` ends the list of what
    is allowed (e.g. ``" or a callable"`` where the caller also takes a function)."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(
            f"{name}={value!r} is unknown; allowed: {', '.join(map(str, allowed))}{extra}"
        )


def module(model: object, name: str = "model") -> nn.Module:
    """Return ``model`` if it is a ``torch.nn.Module``; otherwise raise ValueError naming it."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    return model
