"""The one-neuron recurrent network of Doya (1992): fixed points, bifurcations, sensitivities,
the loss wall.

The network is the discrete map

    x_{t+1} = (1 - ε) x_t + ε σ(w x_t + b) + ε u_t,

an Euler step of dx/dt = -x + σ(w x + b) + u (Doya's input term w' u, with the
input weight folded into u). With u = 0 its fixed points
solve x = σ(w x + b), i.e. they lie on the curve b = logit(x) - w x; for
w > 4 that curve folds twice and the neuron becomes bistable. Near the
unstable fixed point between the two attractors the end state is extremely
sensitive to x(0) and b (exploding gradients); far from it the end state
forgets x(0) (vanishing gradients). All simulations broadcast over tensors, so
thousands of biases or starting points run as one computation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .checks import integer, number

__all__ = [
    "simulate",
    "end_state_gradients",
    "sensitivities",
    "fixed_point_bias",
    "fixed_points",
    "flow_slope",
    "is_stable",
    "fold_points",
    "fixed_point_sensitivity",
    "wall_loss",
    "descend",
]

Number = float | torch.Tensor


def _check_eps(eps: object) -> float:
    return number("eps", eps, high=1.0, allowed="a number in (0, 1]")


def _tensor(value: Number, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.tensor(float(value), dtype=dtype)


def simulate(
    x0: Number,
    *,
    w: Number,
    b: Number,
    eps: float,
    steps: int,
    u: Number = 0.0,
    trajectory: bool = False,
) -> torch.Tensor:
    """Iterate the map (1-ε)x + ε σ(w x + b) + ε u ``steps`` times from ``x0`` (time
    T = steps·ε in the flow's units).

    Arguments broadcast, so ``b`` may hold thousands of biases. ``u`` is a
    constant input. Returns x(T), or with ``trajectory=True`` every state,
    stacked along a new first dimension of length steps+1. Gradients flow
    through the loop when the inputs require them.
    """
    eps = _check_eps(eps)
    steps = integer("steps", steps)
    x = _tensor(x0)
    x = x * torch.ones_like(_tensor(b) * _tensor(w))
    states = [x]
    for _ in range(steps):
        x = (1 - eps) * x + eps * torch.sigmoid(w * x + b) + eps * u
        if trajectory:
            states.append(x)
    return torch.stack(states) if trajectory else x


def end_state_gradients(
    x0: Number, *, w: Number, b: Number, eps: float, steps: int
) -> dict[str, torch.Tensor]:
    """x(T) with its autograd derivatives ∂x(T)/∂x(0), ∂x(T)/∂b and ∂x(T)/∂w, elementwise.

    The inputs are broadcast to one shape and each element is an independent
    run, so one backward pass gives every run's derivatives at once.
    """
    shape = torch.broadcast_shapes(_tensor(x0).shape, _tensor(b).shape, _tensor(w).shape)
    x0_ = _tensor(x0).detach().expand(shape).clone().requires_grad_(True)
    b_ = _tensor(b).detach().expand(shape).clone().requires_grad_(True)
    w_ = _tensor(w).detach().expand(shape).clone().requires_grad_(True)
    xt = simulate(x0_, w=w_, b=b_, eps=eps, steps=steps)
    dx0, db, dw = torch.autograd.grad(xt.sum(), [x0_, b_, w_])
    return {"x": xt.detach(), "dx0": dx0, "db": db, "dw": dw}


def sensitivities(
    x0: Number, *, w: Number, b: Number, eps: float, steps: int
) -> dict[str, torch.Tensor]:
    """x(T), ∂x(T)/∂x(0), ∂x(T)/∂b and ∂x(T)/∂w by forward-mode recursion, without building a graph.

    Each derivative obeys its own linear recursion alongside the state, e.g.
    ``s_{t+1} = (1 - ε + ε w σ') s_t + ε σ'`` for s = ∂x_t/∂b. The result equals
    :func:`end_state_gradients` (autograd) to rounding error but is several
    times faster, which matters inside a gradient-descent loop.
    """
    eps = _check_eps(eps)
    steps = integer("steps", steps)
    w_, b_ = _tensor(w), _tensor(b)
    x = _tensor(x0) * torch.ones_like(b_ * w_)
    dx0 = torch.ones_like(x)
    db = torch.zeros_like(x)
    dw = torch.zeros_like(x)
    for _ in range(steps):
        s = torch.sigmoid(w_ * x + b_)
        slope = eps * s * (1 - s)
        mult = (1 - eps) + slope * w_
        dx0, db, dw = mult * dx0, mult * db + slope, mult * dw + slope * x
        x = (1 - eps) * x + eps * s
    return {"x": x, "dx0": dx0, "db": db, "dw": dw}


def fixed_point_bias(x: Number, *, w: Number) -> torch.Tensor:
    """The bias b = logit(x) - w x for which x is a fixed point: the whole fixed-point curve,
    x in (0, 1)."""
    x = _tensor(x)
    if bool(((x <= 0) | (x >= 1)).any()):
        raise ValueError("x must lie strictly between 0 and 1 (fixed points of x = σ(wx+b) do)")
    return torch.log(x / (1 - x)) - w * x


def fixed_points(*, w: float, b: float, grid: int = 20001) -> list[float]:
    """All fixed points x = σ(w x + b) in (0, 1), ascending, to machine precision.

    Sign changes of x - σ(wx + b) on a fine grid are refined by bisection.
    A fixed point where the curve only touches zero (exactly at a fold) can be missed.
    """
    integer("grid", grid, 3)
    w, b = float(w), float(b)
    g = lambda x: x - 1.0 / (1.0 + np.exp(-(w * x + b)))  # noqa: E731
    xs = np.linspace(1e-12, 1 - 1e-12, grid)
    vals = g(xs)
    roots = [float(x) for x, v in zip(xs, vals, strict=True) if v == 0.0]
    for i in np.nonzero(np.sign(vals[:-1]) * np.sign(vals[1:]) < 0)[0]:
        lo, hi = xs[i], xs[i + 1]
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if np.sign(g(mid)) == np.sign(g(lo)):
                lo = mid
            else:
                hi = mid
            if hi - lo < 1e-16:
                break
        roots.append(float(0.5 * (lo + hi)))
    return sorted(roots)


def flow_slope(x: Number, *, w: Number) -> torch.Tensor:
    """d/dx of the flow -x + σ(wx+b) at a fixed point x: -1 + w x(1-x) (negative means stable)."""
    x = _tensor(x)
    return -1 + w * x * (1 - x)


def is_stable(x: Number, *, w: Number) -> torch.Tensor:
    """Whether the fixed point x attracts: w x(1-x) < 1 (for the flow and for the map with
    ε ≤ 1)."""
    return flow_slope(x, w=w) < 0


def fold_points(*, w: float) -> list[tuple[float, float]]:
    """The two saddle-node (fold) points (x, b) of the fixed-point curve, lower x first.

    At a fold w x(1-x) = 1, so x = (1 ∓ √(1 - 4/w))/2; they exist only for w > 4.
    Between their b values the neuron has three fixed points (two stable).
    """
    number("w", w, low=4.0,
           allowed="a number > 4 (for w <= 4 the fixed point is unique and nothing folds)")
    root = math.sqrt(1 - 4 / w)
    out = []
    for x in ((1 - root) / 2, (1 + root) / 2):
        out.append((x, math.log(x / (1 - x)) - w * x))
    return out


def fixed_point_sensitivity(x: Number, *, w: Number) -> torch.Tensor:
    """∂x*/∂b along the fixed-point curve: x(1-x) / (1 - w x(1-x)) = 1/(1/(x(1-x)) - w).

    Positive on the stable branches, negative on the unstable one, infinite at the folds.
    """
    x = _tensor(x)
    s = x * (1 - x)
    return s / (1 - w * s)


def wall_loss(
    b: Number,
    *,
    w: Number = 5.0,
    x0: Number = 0.5,
    target: float = 0.855,
    eps: float = 0.1,
    steps: int = 300,
) -> torch.Tensor:
    """The loss L(b) = (target - x(T))² of the geometric model (the source's w = 5, x(0) = 0.5,
    u = 0)."""
    return (target - simulate(x0, w=w, b=b, eps=eps, steps=steps)) ** 2


def descend(
    b0: Number,
    *,
    lr: float,
    iters: int,
    clip: float | None = None,
    w0: Number | None = None,
    **loss_kwargs: object,
) -> dict[str, torch.Tensor]:
    """Gradient descent on b (and on w when ``w0`` is given) for :func:`wall_loss`, batched over
    starts.

    ``clip`` rescales each run's gradient to norm at most ``clip`` before the
    step (gradient-norm clipping, Pascanu et al. 2013); ``None`` is plain
    descent, and a tensor gives each run its own threshold (``inf``: no clipping).
    ``loss_kwargs`` (``x0``, ``target``, ``eps``, ``steps``) go to :func:`wall_loss`;
    gradients come from :func:`sensitivities`. Returns the parameter and loss
    histories (``b``, ``w``, ``loss``, ``grad_norm``), each of shape (iters+1, *batch);
    ``grad_norm`` is the norm before clipping and its last row repeats the previous one.
    """
    number("lr", lr)
    integer("iters", iters)
    if isinstance(clip, torch.Tensor):
        if bool((clip <= 0).any()):
            raise ValueError("clip must be positive (inf for no clipping) in every entry")
    elif clip is not None:
        number("clip", clip, allowed="a positive number, a tensor of them, or None")
    unknown = set(loss_kwargs) - {"x0", "target", "eps", "steps"}
    if unknown:
        raise ValueError(
            f"unknown keyword(s) {sorted(unknown)}; allowed: x0, target, eps, steps "
            "(pass the weight as w0)"
        )
    opts: dict[str, Any] = {"x0": 0.5, "target": 0.855, "eps": 0.1, "steps": 300, **loss_kwargs}
    b = _tensor(b0).detach().clone()
    train_w = w0 is not None
    w = _tensor(w0 if w0 is not None else 5.0).detach().clone() * torch.ones_like(b)
    b = b * torch.ones_like(w)
    hist: dict[str, list[torch.Tensor]] = {"b": [], "w": [], "loss": [], "grad_norm": []}
    for i in range(iters + 1):
        sens = sensitivities(opts["x0"], w=w, b=b, eps=opts["eps"], steps=opts["steps"])
        resid = sens["x"] - opts["target"]
        loss = resid**2
        gb = 2 * resid * sens["db"]
        gw = 2 * resid * sens["dw"] if train_w else torch.zeros_like(gb)
        norm = torch.sqrt(gb**2 + gw**2)
        hist["b"].append(b.clone())
        hist["w"].append(w.clone())
        hist["loss"].append(loss)
        hist["grad_norm"].append(norm)
        if i == iters:
            break
        scale = (
            torch.ones_like(norm) if clip is None
            else torch.clamp(clip / norm.clamp_min(1e-300), max=1.0)
        )
        b = b - lr * scale * gb
        w = w - lr * scale * gw
    return {k: torch.stack(v) for k, v in hist.items()}
