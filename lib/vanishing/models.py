"""Builders for the feed-forward networks the book studies.

One builder, :func:`mlp`, covers the plain deep network, its normalized and
residual variants, every activation and every initialization the chapters
compare. Its hidden blocks are kept in ``model.blocks`` so that probes can walk
the network from input to output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from .checks import choice, integer, number

__all__ = ["ACTIVATIONS", "NORMS", "activation", "mlp", "MLP"]

#: Activation names the builders accept, mapped to their module classes.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "linear": nn.Identity,
}

# Initialization schemes by name (:func:`mlp`'s ``init``). Each sets a Linear layer's weight in
# place; biases start at zero.
_INITS = ("default", "xavier", "he", "lecun", "orthogonal")

#: Normalization layers a hidden block may carry (``None`` for none).
NORMS = (None, "batch", "layer")


def activation(name: str) -> nn.Module:
    """Return a fresh activation module for ``name`` (one of :data:`ACTIVATIONS`)."""
    choice("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


def _gain(act: str) -> float:
    # The gain that keeps the forward variance constant for this activation
    # (torch's values; sigmoid has no such constant, so it keeps gain 1 as Glorot did).
    if act in ("relu",):
        return math.sqrt(2.0)
    if act == "leaky_relu":
        return nn.init.calculate_gain("leaky_relu", 0.01)
    if act == "tanh":
        return 5.0 / 3.0
    return 1.0


def _init_weights(
    layer: nn.Linear, init: str | Callable[[torch.Tensor], None], act: str = "linear"
) -> None:
    """Initialize ``layer`` in place with scheme ``init`` for an ``act`` nonlinearity.

    ``"xavier"``: variance 2/(fan_in+fan_out) (Glorot & Bengio 2010);
    ``"he"``: variance 2/fan_in for rectifiers (He et al. 2015), with the
    leaky-ReLU correction; ``"lecun"``: variance 1/fan_in; ``"orthogonal"``:
    a random orthogonal matrix scaled by the activation's gain; ``"default"``:
    torch's own uniform init. A callable receives the weight tensor and fills
    it in place, for schemes a chapter invents (it must not return a value).
    :func:`mlp`, the one caller, has checked ``init`` and ``act``.
    """
    w = layer.weight
    with torch.no_grad():
        if callable(init):
            init(w)
        elif init == "default":
            layer.reset_parameters()
            return
        elif init == "xavier":
            nn.init.xavier_normal_(w)
        elif init == "he":
            slope = 0.01 if act == "leaky_relu" else 0.0
            nn.init.kaiming_normal_(w, a=slope, nonlinearity="leaky_relu")
        elif init == "lecun":
            nn.init.normal_(w, 0.0, 1.0 / math.sqrt(w.shape[1]))
        else:  # "orthogonal"
            nn.init.orthogonal_(w, gain=_gain(act))
        if layer.bias is not None:
            layer.bias.zero_()


class Block(nn.Module):
    """One hidden layer: Linear, optional normalization, activation; optionally residual
    (built by :func:`mlp`, not exported).

    With ``residual=True`` the block computes ``x + f(x)``: its Jacobian is
    ``I + J_f``, the "+1 path" that lets gradients skip the block.
    """

    def __init__(
        self, in_features: int, out_features: int, act: str, norm: str | None, residual: bool
    ):
        super().__init__()
        if residual and in_features != out_features:
            raise ValueError(
                "residual=True needs in_features == out_features, "
                f"got {in_features} and {out_features}"
            )
        self.linear = nn.Linear(in_features, out_features)
        if norm == "batch":
            self.norm: nn.Module = nn.BatchNorm1d(out_features)
        elif norm == "layer":
            self.norm = nn.LayerNorm(out_features)
        else:
            self.norm = nn.Identity()
        self.act = activation(act)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm(self.linear(x)))
        return x + out if self.residual else out


class MLP(nn.Module):
    """A stack of :class:`Block` s followed by a linear read-out ``head``."""

    def __init__(self, blocks: list[Block], head: nn.Linear):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = cast(Block, self.blocks[0])
        if x.dim() != 2 or x.shape[1] != first.linear.in_features:
            raise ValueError(
                f"input must have shape (batch, {first.linear.in_features}), got {tuple(x.shape)}"
            )
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def linears(self) -> list[nn.Linear]:
        """The network's Linear layers from input to output (read-out last)."""
        return [cast(Block, b).linear for b in self.blocks] + [self.head]


def mlp(
    *,
    in_features: int,
    out_features: int,
    depth: int,
    width: int,
    activation: str = "relu",
    init: str | Callable[[torch.Tensor], None] = "default",
    norm: str | None = None,
    residual: bool = False,
    branch_scale: float | None = None,
) -> MLP:
    """Build a multi-layer perceptron with ``depth`` hidden layers of ``width`` units.

    ``activation`` is one of :data:`ACTIVATIONS`, ``init`` one of ``"default"``,
    ``"xavier"``, ``"he"``, ``"lecun"``, ``"orthogonal"`` (or a callable filling a weight
    tensor), ``norm`` one of :data:`NORMS`.
    ``residual=True`` adds a skip connection around every hidden block after the
    first (the first changes the width, so it cannot be an identity).
    ``branch_scale`` (residual networks only) multiplies the initial weights of every
    residual branch, e.g. ``1 / sqrt(depth)`` so that the sum of ``depth`` branches
    keeps the signal's variance bounded (08_residual).
    The read-out layer gets the same initialization with a linear gain.
    """
    integer("in_features", in_features)
    integer("out_features", out_features)
    integer("depth", depth)
    integer("width", width)
    choice("activation", activation, ACTIVATIONS)
    if not callable(init):
        choice("init", init, _INITS, " or a callable")
    choice("norm", norm, NORMS)
    if not isinstance(residual, bool):
        raise ValueError(f"residual must be True or False, got {residual!r}")
    if branch_scale is not None:
        if not residual:
            raise ValueError("branch_scale scales residual branches: it needs residual=True")
        number("branch_scale", branch_scale, low_ok=True, high_ok=False,
               allowed="a finite number >= 0 or None")
    blocks = [
        Block(in_features if i == 0 else width, width, activation, norm, residual and i > 0)
        for i in range(depth)
    ]
    head = nn.Linear(width, out_features)
    for b in blocks:
        _init_weights(b.linear, init, activation)
    _init_weights(head, init, "linear")
    if branch_scale is not None:
        with torch.no_grad():
            for b in blocks:
                if b.residual:
                    b.linear.weight.mul_(branch_scale)
    return MLP(blocks, head)


# Initializers from the sources, to pass as ``mlp(init=...)`` (06_initialization tests them).

Init = Callable[[torch.Tensor], None]


def _fans(w: torch.Tensor) -> tuple[int, int]:
    if w.dim() != 2:
        raise ValueError(f"weight must be a 2-D matrix (out, in), got shape {tuple(w.shape)}")
    return int(w.shape[1]), int(w.shape[0])


def normal_init(
    *,
    mean: float | Callable[[int], float] = 0.0,
    std: float | Callable[[int, int], float] | None = None,
) -> Init:
    """Return an initializer drawing weights from a Gaussian N(mean, std^2).

    ``mean`` is a number or a function of fan-in; ``std`` a number, a function
    of ``(fan_in, fan_out)``, or ``None`` for Glorot's sqrt(2/(fan_in+fan_out)).
    Keeping ``std`` and changing only ``mean`` isolates the effect of the mean.
    """
    if not (callable(mean) or isinstance(mean, (int, float))) or isinstance(mean, bool):
        raise ValueError(f"mean must be a number or a function of fan_in, got {mean!r}")
    if std is not None and not callable(std):
        number("std", std, allowed="a positive number, a function of (fan_in, fan_out) or None")

    def init(w: torch.Tensor) -> None:
        fan_in, fan_out = _fans(w)
        m = float(mean(fan_in)) if callable(mean) else float(mean)
        if std is None:
            s = math.sqrt(2.0 / (fan_in + fan_out))
        else:
            s = float(std(fan_in, fan_out)) if callable(std) else float(std)
        with torch.no_grad():
            w.normal_(m, s)

    return init


def kumar_std(fan_in: int, activation: str = "sigmoid") -> float:
    """Kumar's (2017) weight standard deviation for a unit with ``fan_in`` inputs.

    For an activation g differentiable at 0 Kumar proposes
    ``v^2 = 1 / (N g'(0)^2 (1 + g(0)^2))``; for the ReLU, ``v^2 = 2/N``. With the
    logistic sigmoid (g(0) = 1/2, g'(0) = 1/4) this is 12.8/N, a standard
    deviation of about 3.58/sqrt(N).
    """
    integer("fan_in", fan_in)
    # a known activation may have none; isinstance first, so that any value gets this message
    kumar = ("sigmoid", "tanh", "gelu", "silu", "relu")
    if not (isinstance(activation, str) and activation in kumar):
        raise ValueError(f"activation={activation!r} has no Kumar standard deviation here; "
                         f"allowed: {', '.join(map(repr, kumar))}")
    if activation == "relu":
        return math.sqrt(2.0 / fan_in)
    with torch.enable_grad():  # initializers run under no_grad
        z = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        g0 = ACTIVATIONS[activation]()(z)
        (d0,) = torch.autograd.grad(g0.sum(), z)
    g, d = float(g0.detach()), float(d0)
    return math.sqrt(1.0 / (fan_in * d**2 * (1.0 + g**2)))


def kumar_init(activation: str = "sigmoid") -> Init:
    """Initializer with zero mean and :func:`kumar_std` for ``activation``."""
    kumar_std(1, activation)  # validates the name
    return normal_init(mean=0.0, std=lambda fan_in, fan_out: kumar_std(fan_in, activation))


def yilmaz_poli_mean(fan_in: int) -> float:
    """Yilmaz & Poli's (2022) mean of the initial weights, ``max(-1, -8/N)``.

    N is the number of inputs a unit receives (the width of the layer below).
    """
    integer("fan_in", fan_in)
    return max(-1.0, -8.0 / fan_in)


def yilmaz_poli_init(*, std: float | Callable[[int, int], float] | None = None) -> Init:
    """Initializer with mean :func:`yilmaz_poli_mean` and spread ``std`` (as in
    :func:`normal_init`)."""
    return normal_init(mean=yilmaz_poli_mean, std=std)
