"""Measuring gradient flow: how big the gradient is at each layer, and why.

Three measurements, each on any ``nn.Module``:

* :func:`grad_norms` - the gradient's size at every weight matrix, input to output;
* :func:`activation_stats` - per activation layer, the share of saturated units
  (derivative almost zero for that input) and of dead units (derivative exactly
  zero for every example of the batch);
* :func:`update_ratios` - the size of one SGD step relative to the weights it moves.

None of them changes the model: parameters, ``.grad`` and training mode stay as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["ACTIVATION_TYPES", "grad_norms", "activation_stats", "update_ratios", "weight_names"]

#: Module types treated as elementwise activations by :func:`activation_stats`.
ACTIVATION_TYPES = (nn.Sigmoid, nn.Tanh, nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Softplus, nn.Hardtanh)


def weight_names(model: nn.Module) -> list[str]:
    """Names of the model's weight matrices (parameters with two or more dimensions), in order."""
    return [n for n, p in model.named_parameters() if p.dim() >= 2 and p.requires_grad]


def _check_model(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(True for _ in model.parameters()):
        raise ValueError("model has no parameters: there is no gradient to measure")


@contextmanager
def _mode(model: nn.Module, train: bool | None):
    """Temporarily set train/eval mode of every submodule, restoring each one's own flag.

    Buffers (batch normalization's running statistics) are restored too: a
    forward pass in training mode would otherwise update them.
    """
    saved = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    if train is not None:
        model.train(train)
    try:
        yield
    finally:
        for m, flag in saved:
            m.training = flag
        with torch.no_grad():
            for b, copy in buffers:
                b.copy_(copy)


def grad_norms(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    train: bool | None = None,
) -> dict[str, float]:
    """Euclidean norm of dLoss/dW for every weight matrix W, ordered from input to output.

    The gradient is taken with :func:`torch.autograd.grad`, so the model's
    ``.grad`` fields are left untouched. ``train`` temporarily sets the mode
    (``None`` keeps the model's own); it matters for batch normalization.
    """
    _check_model(model)
    names = weight_names(model)
    if not names:
        raise ValueError("model has no weight matrices (parameters with 2+ dimensions) to measure")
    params = dict(model.named_parameters())
    with _mode(model, train):
        loss = loss_fn(model(inputs), targets)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar, got a tensor of shape {tuple(loss.shape)}")
        # Inside the context: the graph saved the buffers, which are restored on leaving it.
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
    # The norm is taken in float64: squaring float32 entries of 1e-20 or less underflows,
    # and a small but nonzero gradient would be reported as exactly zero.
    return {n: (0.0 if g is None else float(g.detach().double().norm())) for n, g in zip(names, grads, strict=True)}


def _max_derivative(module: nn.Module) -> float:
    # The largest derivative the activation reaches, found on a fine grid.
    z = torch.linspace(-20, 20, 40001, requires_grad=True)
    (d,) = torch.autograd.grad(module(z).sum(), z)
    return float(d.abs().max())


def activation_stats(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    threshold: float = 0.1,
    train: bool | None = None,
) -> list[dict[str, float | str]]:
    """Statistics of every activation layer's output on one batch, in forward order.

    For each layer: ``name``, ``kind`` (the module class), ``mean`` and ``std`` of
    its output, ``saturated`` - the fraction of (example, unit) entries whose
    derivative is below ``threshold`` times the activation's largest
    derivative - and ``dead`` - the fraction of units whose derivative is exactly
    zero for every example in the batch (a dead rectifier passes no gradient).
    Units are the last dimension of the activation (an MLP's features); for
    rectifiers, ``saturated`` is simply the share of inactive entries (about
    half in a healthy layer), since they saturate on one side by design.
    For convolutional feature maps use :mod:`vanishing.checkup`, which counts channels.
    """
    _check_model(model)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    records: list[tuple[str, nn.Module, torch.Tensor]] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        records.append((names[module], module, args[0].detach()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, ACTIVATION_TYPES)]
    if not handles:
        raise ValueError("model has no activation modules of a known type: " + ", ".join(t.__name__ for t in ACTIVATION_TYPES))
    try:
        with _mode(model, train), torch.no_grad():
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    stats = []
    for name, module, z in records:
        z = z.float().requires_grad_(True)
        out = module(z)
        (d,) = torch.autograd.grad(out.sum(), z)
        d, out = d.detach().abs(), out.detach()
        flat = d.reshape(-1, d.shape[-1]) if d.dim() > 1 else d.reshape(-1, 1)
        stats.append(
            {
                "name": name,
                "kind": type(module).__name__,
                "mean": float(out.mean()),
                "std": float(out.std()) if out.numel() > 1 else 0.0,
                "saturated": float((d < threshold * _max_derivative(module)).float().mean()),
                "dead": float((flat == 0).all(dim=0).float().mean()),
            }
        )
    return stats


def update_ratios(model: nn.Module, lr: float) -> dict[str, float]:
    """For each weight matrix with a gradient: std(lr * grad) / std(weight), the update-to-data ratio.

    Uses the ``.grad`` already stored on the model (call ``loss.backward()`` first).
    A healthy layer moves by roughly 1e-3 of its scale per step; orders of
    magnitude less means it is effectively not learning.
    """
    _check_model(model)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    out = {}
    for n, p in model.named_parameters():
        if p.dim() >= 2 and p.grad is not None:
            # float64: the spread of a 1e-20 gradient would underflow when squared in float32.
            out[n] = float((lr * p.grad.detach().double()).std() / p.detach().double().std().clamp_min(1e-300))
    if not out:
        raise ValueError("no weight matrix has a .grad: call loss.backward() before update_ratios")
    return out
