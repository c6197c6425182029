"""The one integer check every module of the library uses on its arguments.

A count, a size or a seed that is not a plain ``int`` in range should fail where
it is passed, with a message that names the parameter and what is allowed,
rather than deep inside torch. ``True`` is refused although it is an ``int`` in
Python: ``steps=True`` is a mistake, not one step.
"""

from __future__ import annotations


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
