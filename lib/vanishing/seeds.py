"""Reporting a result over seeds: a median and a spread, at the resolution the experiment supports.

One training run is one draw: its last digits (and sometimes its outcome) move
with the seed and with the last bit of a kernel. What survives a rerun is the
distribution over seeds, so the book prints results as

    0.85 (0.80-0.90, 5 seeds)        median (lowest-highest, number of seeds)

with :func:`spread`, and outcomes against a stated threshold ("learns in 4 of
5 seeds") with :func:`count`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from .checks import number

__all__ = ["Spread", "spread", "count"]


def _values(values: Iterable[float], name: str) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: values must be numbers, got {values!r}") from error
    if not out:
        raise ValueError(f"{name}: values must hold at least one result, got none")
    if any(math.isnan(v) for v in out):
        raise ValueError(
            f"{name}: values must not be NaN (a diverged run is a result: record it as inf)"
        )
    return out


@dataclass(frozen=True)
class Spread:
    """The median, lowest and highest of a result over ``n`` seeds."""

    median: float
    low: float
    high: float
    n: int

    def format(self, fmt: str = ".2g") -> str:
        """``"median (low-high, n seeds)"`` with each number in format ``fmt``
        (e.g. ``".2f"``, ``".1e"``).

        A range whose ends carry a sign (a negative end, or a ``"+"`` format) reads
        ``"(low to high, ...)"``: ``-0.15--0.03`` or ``+0.01-+0.12`` would not.
        """
        m, lo, hi = (format(v, fmt) for v in (self.median, self.low, self.high))
        signed = any(text.lstrip().startswith(("-", "+")) for text in (lo, hi))
        dash = " to " if signed else "-"
        return f"{m} ({lo}{dash}{hi}, {self.n} seeds)"

    def __str__(self) -> str:
        return self.format()


def spread(values: Iterable[float]) -> Spread:
    """Median and range of one result over seeds (a non-finite run, e.g. ``inf`` for a
    divergence, counts).
    """
    out = sorted(_values(values, "spread"))
    return Spread(median=statistics.median(out), low=out[0], high=out[-1], n=len(out))


def count(values: Iterable[float], threshold: float, *, above: bool = True) -> int:
    """How many seeds reach ``threshold`` (``>=`` it, or ``<=`` it with ``above=False``)."""
    number("count: threshold", threshold, -math.inf, low_ok=True, allowed="a number")
    out = _values(values, "count")
    return sum(v >= threshold for v in out) if above else sum(v <= threshold for v in out)
