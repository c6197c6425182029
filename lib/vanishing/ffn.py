"""Fixes for deep feed-forward networks, and the measurements that test them.

The chapters on activations, initialization and normalization share this
machinery:

* initializers to pass as ``models.mlp(init=...)``: :func:`normal_init` (any mean
  and spread), :func:`kumar_init` (Kumar 2017) and :func:`yilmaz_poli_init`
  (Yilmaz & Poli 2022), with the numbers behind them, :func:`kumar_std` and
  :func:`yilmaz_poli_mean`;
* :func:`gradient_profile` - the per-layer gradient norms of a freshly built
  network, averaged over seeds, the basic measurement of a depth sweep;
* :func:`inactive_fraction` - the share of units whose pre-activation is
  negative for every example (a dead ReLU; an "off" leaky ReLU);
* :func:`train_with_stats` - the book's training loop, run in chunks, with
  per-layer saturation and dead-unit statistics recorded between chunks;
* :func:`gradient_predictiveness` - how the loss and its gradient change along
  the gradient direction, the "smoothness" view of Santurkar et al. (2018).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from . import models, probes, sweeps
from . import train as train_mod

__all__ = [
    "normal_init",
    "kumar_std",
    "kumar_init",
    "yilmaz_poli_mean",
    "yilmaz_poli_init",
    "gradient_profile",
    "inactive_fraction",
    "train_with_stats",
    "gradient_predictiveness",
]

Init = Callable[[torch.Tensor], None]


def _fans(w: torch.Tensor) -> tuple[int, int]:
    if w.dim() != 2:
        raise ValueError(f"weight must be a 2-D matrix (out, in), got shape {tuple(w.shape)}")
    return int(w.shape[1]), int(w.shape[0])


def normal_init(*, mean: float | Callable[[int], float] = 0.0, std: float | Callable[[int, int], float] | None = None) -> Init:
    """Return an initializer drawing weights from a Gaussian N(mean, std^2).

    ``mean`` is a number or a function of fan-in; ``std`` a number, a function
    of ``(fan_in, fan_out)``, or ``None`` for Glorot's sqrt(2/(fan_in+fan_out)).
    Keeping ``std`` and changing only ``mean`` isolates the effect of the mean.
    """
    if not (callable(mean) or isinstance(mean, (int, float))) or isinstance(mean, bool):
        raise ValueError(f"mean must be a number or a function of fan_in, got {mean!r}")
    if std is not None and not callable(std) and (isinstance(std, bool) or not isinstance(std, (int, float)) or std <= 0):
        raise ValueError(f"std must be a positive number, a function of (fan_in, fan_out) or None, got {std!r}")

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
    if isinstance(fan_in, bool) or not isinstance(fan_in, int) or fan_in < 1:
        raise ValueError(f"fan_in must be a positive int, got {fan_in!r}")
    if activation == "relu":
        return math.sqrt(2.0 / fan_in)
    if activation not in ("sigmoid", "tanh", "gelu", "silu"):
        raise ValueError(
            f"activation={activation!r} has no Kumar standard deviation here; allowed: sigmoid, tanh, gelu, silu, relu"
        )
    with torch.enable_grad():  # initializers run under no_grad
        z = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        g0 = models.activation(activation)(z)
        (d0,) = torch.autograd.grad(g0.sum(), z)
    g0, d0 = float(g0.detach()), float(d0)
    return math.sqrt(1.0 / (fan_in * d0**2 * (1.0 + g0**2)))


def kumar_init(activation: str = "sigmoid") -> Init:
    """Initializer with zero mean and :func:`kumar_std` for ``activation``."""
    kumar_std(1, activation)  # validates the name
    return normal_init(mean=0.0, std=lambda fan_in, fan_out: kumar_std(fan_in, activation))


def yilmaz_poli_mean(fan_in: int) -> float:
    """Yilmaz & Poli's (2022) mean of the initial weights, ``max(-1, -8/N)``.

    N is the number of inputs a unit receives (the width of the layer below).
    """
    if isinstance(fan_in, bool) or not isinstance(fan_in, int) or fan_in < 1:
        raise ValueError(f"fan_in must be a positive int, got {fan_in!r}")
    return max(-1.0, -8.0 / fan_in)


def yilmaz_poli_init(*, std: float | Callable[[int, int], float] | None = None) -> Init:
    """Initializer with mean :func:`yilmaz_poli_mean` and spread ``std`` (as in :func:`normal_init`)."""
    return normal_init(mean=yilmaz_poli_mean, std=std)


def gradient_profile(
    *,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    depth: int,
    width: int,
    activation: str,
    init: str | Init,
    norm: str | None = None,
    seeds: Sequence[int] = (0,),
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
    train: bool | None = True,
) -> np.ndarray:
    """Per-layer gradient norms ||dL/dW_l|| of freshly built networks, one row per seed.

    Builds ``models.mlp`` with the given shape for each seed (torch's global
    generator is seeded with it), measures the gradient norms on
    ``(inputs, targets)`` (as :func:`vanishing.probes.grad_norms` does, but with
    the norm taken in float64 so that gradients below 1e-19 do not read as
    zero) and returns an array of shape
    ``(len(seeds), depth + 1)``: hidden layers from the input, read-out last.

    Where the networks can be stacked (no batch normalization, the loss cross-entropy
    or mean squared error) all seeds are measured in one pass of
    :mod:`vanishing.sweeps`, which gives the same numbers (bit for bit on the build
    machine); otherwise one network at a time.
    """
    if len(seeds) == 0:
        raise ValueError("seeds must hold at least one seed")
    out_features = int(targets.max()) + 1 if targets.dtype == torch.long else int(targets.shape[-1])
    nets = []
    for s in seeds:
        torch.manual_seed(int(s))
        nets.append(models.mlp(
            in_features=inputs.shape[1], out_features=out_features, depth=depth, width=width,
            activation=activation, init=init, norm=norm,
        ).to(inputs.device))
    stacked_loss = {nn.functional.cross_entropy: "cross_entropy", nn.functional.mse_loss: "mse"}.get(loss_fn)
    if norm != "batch" and stacked_loss is not None:
        return sweeps.grad_norms_batched(sweeps.stack_mlps(nets), inputs, targets, loss=stacked_loss).numpy()
    return np.asarray([list(probes.grad_norms(net, inputs, targets, loss_fn, train=train).values())
                       for net in nets], dtype=float)


def inactive_fraction(model: nn.Module, inputs: torch.Tensor, *, train: bool | None = None) -> list[float]:
    """Per activation layer: the fraction of units whose input is <= 0 for every example of ``inputs``.

    For a ReLU such a unit is dead: it outputs zero and passes no gradient for
    the whole batch. For a leaky ReLU it is merely "off": it still passes a
    gradient scaled by the leak, so it can come back.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    seen: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen.append(args[0].detach())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, probes.ACTIVATION_TYPES)]
    if not handles:
        raise ValueError("model has no activation modules of a known type")
    saved = [(m, m.training) for m in model.modules()]
    try:
        if train is not None:
            model.train(train)
        with torch.no_grad():
            model(inputs)
    finally:
        for h in handles:
            h.remove()
        for m, flag in saved:
            m.training = flag
    return [float((z.reshape(-1, z.shape[-1]) <= 0).all(dim=0).float().mean()) for z in seen]


def train_with_stats(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    steps: int,
    lr: float,
    every: int,
    probe_inputs: torch.Tensor | None = None,
    batch_size: int | None = None,
    threshold: float = 0.1,
    clip: float | None = None,
    test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Train with plain SGD (:func:`vanishing.train.train`) and record per-layer statistics every ``every`` steps.

    Between chunks of ``every`` steps it measures, on ``probe_inputs`` (default:
    the training inputs) in eval mode, each activation layer's mean output,
    saturated share (:func:`vanishing.probes.activation_stats`) and inactive
    share (:func:`inactive_fraction`); ``clip`` caps the gradient norm as in
    :func:`vanishing.train.train`. Only stateless SGD is allowed, because the
    optimizer restarts with each chunk. Returns arrays: ``step`` (n,), ``loss``,
    ``acc`` (and ``test_acc``) (n,), and ``mean``, ``saturated``, ``inactive``
    (n, layers); row 0 is before training.
    """
    for name, value in (("steps", steps), ("every", every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if steps % every:
        raise ValueError(f"steps={steps} must be a multiple of every={every}")
    x_all, y_all = data
    probe = x_all if probe_inputs is None else probe_inputs
    rec: dict[str, list] = {k: [] for k in ("step", "loss", "acc", "test_acc", "mean", "saturated", "inactive")}

    def measure(step: int) -> None:
        stats = probes.activation_stats(model, probe, threshold=threshold, train=False)
        rec["step"].append(step)
        rec["mean"].append([s["mean"] for s in stats])
        rec["saturated"].append([s["saturated"] for s in stats])
        rec["inactive"].append(inactive_fraction(model, probe, train=False))
        was = model.training
        model.eval()
        with torch.no_grad():
            out = model(x_all)
            rec["loss"].append(float(nn.functional.cross_entropy(out, y_all)))
            rec["acc"].append(train_mod.accuracy(out, y_all))
            if test_data is not None:
                rec["test_acc"].append(train_mod.accuracy(model(test_data[0]), test_data[1]))
        model.train(was)

    measure(0)
    for done in range(every, steps + 1, every):
        train_mod.train(model, data, steps=every, lr=lr, batch_size=batch_size, optimizer="sgd",
                        eval_every=every, clip=clip, generator=generator)
        measure(done)
    out = {k: np.asarray(v, dtype=float) for k, v in rec.items() if v}
    return out


def gradient_predictiveness(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    etas: Sequence[float],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
) -> dict[str, np.ndarray]:
    """Walk along the negative gradient and record how the loss and the gradient change.

    At parameters theta with gradient g, for each step size eta it evaluates the
    loss L(theta - eta g) and the gradient change ||grad L(theta - eta g) - g||.
    Returns ``loss`` (len(etas),), ``grad_change`` (len(etas),), ``grad_norm``
    (a scalar array) and ``beta``: the largest ratio ||grad change|| / ||eta g||, an
    effective smoothness constant along this direction (Santurkar et al. 2018).
    The model is measured in train mode (batch statistics) and left unchanged.
    """
    if len(etas) == 0 or any(not e > 0 for e in etas):
        raise ValueError(f"etas must be a non-empty sequence of positive step sizes, got {list(etas)!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    saved_modes = [(m, m.training) for m in model.modules()]
    saved_buffers = [b.detach().clone() for b in model.buffers()]

    def grad_at() -> tuple[float, list[torch.Tensor]]:
        loss = loss_fn(model(inputs), targets)
        return float(loss.detach()), [g.detach() for g in torch.autograd.grad(loss, params)]

    model.train(True)
    try:
        _, g0 = grad_at()
        gnorm = math.sqrt(sum(float((g**2).sum()) for g in g0))
        losses, changes, ratios = [], [], []
        for eta in etas:
            with torch.no_grad():
                for p, s, g in zip(params, saved, g0, strict=True):
                    p.copy_(s - eta * g)
            loss, g1 = grad_at()
            change = math.sqrt(sum(float(((a - b) ** 2).sum()) for a, b in zip(g1, g0, strict=True)))
            losses.append(loss)
            changes.append(change)
            ratios.append(change / (eta * gnorm) if gnorm > 0 else 0.0)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
            for b, s in zip(model.buffers(), saved_buffers, strict=True):
                b.copy_(s)
        for m, flag in saved_modes:
            m.training = flag
    return {
        "loss": np.asarray(losses),
        "grad_change": np.asarray(changes),
        "grad_norm": np.asarray(gnorm),
        "beta": np.asarray(max(ratios)),
    }
