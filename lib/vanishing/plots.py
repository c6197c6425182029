"""The book's figure style and the plots that recur from chapter to chapter.

Colours come from the Okabe-Ito palette, which stays distinguishable for
readers with colour-vision deficiencies; each activation keeps its colour
throughout the book. Figures have an opaque white background so they stay
readable in the site's dark mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.rcsetup import cycler  # what mpl.cycler is; matplotlib's stubs omit that name

__all__ = ["PALETTE", "COLORS", "style", "color", "layer_profile"]

#: Okabe & Ito's colour-blind-safe palette.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]

#: One fixed colour per activation (and for plain vs residual networks).
COLORS = {
    "sigmoid": "#D55E00",
    "tanh": "#E69F00",
    "relu": "#0072B2",
    "leaky_relu": "#56B4E9",
    "gelu": "#009E73",
    "silu": "#009E73",
    "linear": "#000000",
    "plain": "#D55E00",
    "residual": "#0072B2",
}


def style() -> None:
    """Apply the book's matplotlib style (call once, in a chapter's first cell)."""
    mpl.rcParams.update(
        {
            "figure.figsize": (7.0, 4.0),
            "figure.dpi": 100,
            "savefig.dpi": 100,
            "figure.facecolor": "white",
            "axes.facecolor": "white",
            "savefig.facecolor": "white",
            "axes.prop_cycle": cycler(color=PALETTE),
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.titlesize": 12,
            "axes.labelsize": 11,
            "legend.frameon": False,
            "font.size": 10,
            "svg.hashsalt": "vanishing",
        }
    )


def color(name: str) -> str:
    """The book's colour for an activation or architecture name (a palette colour otherwise)."""
    if name in COLORS:
        return COLORS[name]
    return PALETTE[sum(map(ord, name)) % len(PALETTE)]


def layer_profile(
    ax: plt.Axes,
    values: Sequence[float] | dict[str, float],
    *,
    label: str | None = None,
    color_name: str | None = None,
    ylabel: str = "gradient norm ‖∂L/∂W‖",
    marker: str = "o",
) -> None:
    """Plot one value per layer (input layer = 1) on a log scale, e.g. per-layer gradient norms.

    Zeros (a gradient that underflowed) cannot sit on a log axis; they are
    drawn as open markers on the bottom edge so they are seen, not hidden.
    """
    vals = np.asarray(
        list(values.values()) if isinstance(values, dict) else list(values), dtype=float
    )
    if vals.ndim != 1 or len(vals) == 0:
        raise ValueError("values must be a non-empty sequence of numbers, one per layer")
    layers = np.arange(1, len(vals) + 1)
    c = color(color_name or label or "") if (color_name or label) else None
    positive = vals > 0
    ax.plot(layers[positive], vals[positive], marker=marker, ms=3, label=label, color=c)
    if (~positive).any():
        ax.plot(
            layers[~positive],
            np.full((~positive).sum(), ax.get_ylim()[0] if positive.any() else 1e-45),
            ls="none", marker=marker, mfc="none", color=c,
        )
    ax.set_yscale("log")
    ax.set_xlabel("layer (1 = nearest the input)")
    ax.set_ylabel(ylabel)
