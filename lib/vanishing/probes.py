"""Measuring gradient flow: what each layer receives going forward and sends back going backward.

The weight gradient of a layer mixes two signals: for a linear layer
``z = W h``, ``dL/dW = delta h^T``, the product of the **backward** signal
``delta = dL/dz`` (the error arriving at the layer's output) and the **forward**
signal ``h`` (the activations arriving at its input). A small ``||dL/dW||`` can
mean either, and the cure differs, so the measurement core keeps them apart:

* :func:`signals` - on any ``nn.Module``, one :class:`Signal` per layer, in the
  order the layers run: the input's RMS and spread across the batch, the output's,
  the backward signal ``||dL/d(output)||``, the weight norm and its gradient's
  norm, saturated and dead shares, and (given an optimizer) the update-to-weight ratio;
* :func:`safe_norm` - the one Euclidean norm every measurement uses (float64, no underflow).

Views of the same measurements keep the chapters short: :func:`grad_norms`
(``||dL/dW||`` per weight matrix), :func:`activation_stats` (per activation
module), :func:`gradient_profile` (the ``||dL/dW||`` profile of freshly built
networks, one row per seed), :func:`inactive_fraction` (units off for a whole batch) and
:func:`gradient_predictiveness` (the loss and gradient along the gradient, the
"smoothness" view of Santurkar et al. 2018).
None of them changes the model: parameters, buffers, ``.grad``, hooks, training
flags and the random-number generators are as they were.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from . import checks, models

__all__ = [
    "SATURATING", "RECTIFIERS", "ACTIVATION_TYPES", "Signal", "signals", "safe_norm", "call",
    "check_loss",
    "grad_norms", "activation_stats", "weight_names", "preserved",
    "gradient_profile", "inactive_fraction", "gradient_predictiveness",
]

#: Activation modules whose derivative vanishes at both ends (saturation is measured for these).
SATURATING = (nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid, nn.Softsign, nn.LogSigmoid)
#: Rectifier-like activation modules (dead units are measured for these).
RECTIFIERS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
              nn.Mish, nn.Softplus, nn.Hardswish)
#: Every module type the library treats as an elementwise activation: the one list.
ACTIVATION_TYPES = SATURATING + RECTIFIERS
# A saturating unit counts as saturated where its derivative is below this share of the
# activation's largest derivative; checkup.THRESHOLDS["saturation_derivative"] takes this value.
_SATURATED_BELOW = 0.1


def safe_norm(tensor: torch.Tensor) -> float:
    """Euclidean norm of ``tensor`` as a Python float, without underflow or overflow.

    ``torch.linalg.vector_norm`` squares the entries in their own format: a
    float32 gradient whose entries are all 1e-30 has "norm" 0 (the squares, 1e-60,
    are below the smallest float32). Here the squares are summed in float64, and
    a float64 tensor whose largest entry is outside [1e-150, 1e150] is first
    divided by that entry (as LAPACK's ``nrm2`` does). Sparse tensors count their
    stored values. Returns exactly 0.0 only when every entry is zero.
    """
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.numel() == 0:
        raise ValueError("tensor must have at least one entry")
    t = tensor.detach()
    if t.is_sparse:
        t = t.coalesce().values()
    t = t.to(torch.float64)
    if t.numel() == 0:  # a sparse tensor with nothing stored
        return 0.0
    biggest = float(t.abs().max())
    if biggest == 0 or not math.isfinite(biggest):
        return biggest
    if 1e-150 < biggest < 1e150:  # every square is a normal float64: no rescaling needed
        return float(t.norm())
    return float(biggest * (t / biggest).norm())


def _spread(t: torch.Tensor) -> float | None:
    """Standard deviation across the batch (dim 0) of each feature, averaged over features, in
    float64."""
    if t.dim() == 0 or t.shape[0] < 2:
        return None
    t = t.detach().to(torch.float64).reshape(t.shape[0], -1)
    return float(t.std(dim=0).mean())


def _rms(t: torch.Tensor) -> float:
    return safe_norm(t) / math.sqrt(t.numel())


def _first_tensor(obj: Any) -> torch.Tensor | None:
    """The first floating-point tensor in a module's input or output (tensor, tuple, dict or
    ModelOutput)."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.is_floating_point() else None
    items = (
        obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (list, tuple)) else ()
    )
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def call(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``: a tuple or list is passed as positional arguments, a dict as keyword
    arguments."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (list, tuple)):
        return model(*inputs)
    return model(inputs)


@dataclass(frozen=True)
class Signal:
    """What one layer receives and sends back on one batch (``None``: does not apply or was not
    reached).

    ``input_rms``/``input_spread`` describe the forward signal arriving at the
    layer (the spread is each feature's standard deviation across the batch,
    averaged over features: near zero, every example looks the same and the
    layer cannot tell classes apart); ``output_rms``/``output_spread`` what it
    passes on; ``backward`` is ``||dL/d(output)||`` summed over the batch, the
    error the layer receives. ``weight_norm`` and ``weight_grad`` are the norms
    of the layer's own weights (its parameters with two or more dimensions, or
    all its parameters if it has none such) and of their gradient;
    ``update_ratio`` is ``||step|| / ||weights||`` for one step of the optimizer
    passed to :func:`signals`. ``saturated`` (saturating activations: share of
    entries whose derivative is below a tenth of its largest) and
    ``dead`` (rectifiers: share of units whose derivative is zero for the whole
    batch; parametrized layers: share of input features exactly zero for the
    whole batch, which catches dead units of functional activations such as
    ``F.relu``) complete the picture. ``calls`` counts how often the layer ran;
    statistics then pool all calls.
    """

    name: str
    kind: str
    calls: int
    input_rms: float | None
    input_spread: float | None
    output_rms: float | None
    output_spread: float | None
    backward: float | None
    weight_norm: float | None
    weight_grad: float | None
    update_ratio: float | None
    saturated: float | None
    dead: float | None


def _own_weights(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
    matrices = [(n, p) for n, p in own if p.dim() >= 2]
    return matrices or own


def _own_saved_tensors() -> torch.autograd.graph.saved_tensors_hooks:
    """Keep the tensors a measurement's own small autograd graph saves out of an enclosing
    ``saved_tensors_hooks`` (gradient checkpointing's): the innermost pair of hooks is the one
    used, so these identity hooks hide the measurement from the checkpoint, which would otherwise
    count its tensors and refuse the recomputation when they differ."""
    return torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)


def _max_derivative(module: nn.Module, cache: dict) -> float:
    """The largest derivative the activation reaches, found on a fine grid (cached per
    configuration)."""
    key = type(module), repr(module)
    if key not in cache:
        z = torch.linspace(-20, 20, 40001, requires_grad=True)
        with torch.enable_grad(), _own_saved_tensors():
            (d,) = torch.autograd.grad(module.forward(z.clone()).sum(), z)
        cache[key] = float(d.abs().max())
    return cache[key]


def _activation_shares(module: nn.Module, x: torch.Tensor, threshold: float, cache: dict
                       ) -> tuple[float, float]:
    """(saturated, dead) for an activation module's input ``x``: the share of entries whose
    derivative is below ``threshold`` times the activation's largest, and the share of units whose
    derivative is zero for every example of the batch."""
    with torch.enable_grad(), _own_saved_tensors():
        z = x.detach().float().clone().requires_grad_(True)
        # forward(), not __call__: no hooks, no recursion; on a copy, which an in-place module may
        # overwrite
        (d,) = torch.autograd.grad(module.forward(z.clone()).sum(), z)
    d = d.abs()
    return (
        float((d < threshold * _max_derivative(module, cache)).float().mean()),
        _all_zero_share(d == 0),
    )


def _unit_dim(t: torch.Tensor) -> int:
    # Convolutional feature maps (N, C, H, W[, D]) have their units (channels) on dim 1;
    # everything else (N, features) or (N, T, features) on the last dim.
    return 1 if t.dim() >= 4 else t.dim() - 1


def _all_zero_share(zero: torch.Tensor) -> float:
    """Share of units for which ``zero`` holds at every entry of the batch (and every position)."""
    if zero.dim() == 0:
        return float(zero)
    d = _unit_dim(zero)
    return float(zero.movedim(d, -1).reshape(-1, zero.shape[d]).all(dim=0).float().mean())


class _Layer:
    """Accumulates one module's statistics over its calls in one forward and backward pass."""

    def __init__(self, name: str, module: nn.Module):
        self.name, self.module, self.calls = name, module, 0
        self.sums: dict[str, list[float]] = {}
        self.backward_sq: float | None = None

    def add(self, key: str, value: float | None, weight: float = 1.0) -> None:
        if value is not None:
            total = self.sums.setdefault(key, [0.0, 0.0])
            total[0] += value * weight
            total[1] += weight

    def mean(self, key: str) -> float | None:
        total = self.sums.get(key)
        return None if total is None else total[0] / total[1]

    def grad_hook(self, grad: torch.Tensor) -> None:
        self.backward_sq = (self.backward_sq or 0.0) + safe_norm(grad) ** 2


@contextmanager
def _user_backward_hooks_off(model: nn.Module) -> Iterator[None]:
    """Silence the user's backward hooks (on parameters, modules and global) for one measurement."""
    from torch.nn.modules import module as module_mod

    saved: list[tuple[dict, dict]] = []
    for d in [p._backward_hooks for p in model.parameters() if p._backward_hooks]:
        saved.append((d, dict(d)))
    for m in model.modules():
        for d in (m._backward_hooks, m._backward_pre_hooks):
            if d:
                saved.append((d, dict(d)))
    for d in (module_mod._global_backward_hooks, module_mod._global_backward_pre_hooks):
        if d:
            saved.append((d, dict(d)))
    for d, _ in saved:
        d.clear()
    try:
        yield
    finally:
        for d, copy_ in saved:
            d.update(copy_)


@contextmanager
def preserved(model: nn.Module, train: bool | None = None) -> Iterator[None]:
    """Run a measurement and leave ``model`` exactly as it was.

    Restores every parameter and buffer value (batch-norm running statistics,
    an ``nn.Embedding(max_norm=...)`` that renormalizes its rows in forward),
    every ``.grad``, each submodule's train/eval flag and the random-number
    generators (dropout draws from them). ``train`` sets the mode meanwhile
    (``None`` keeps the model's own).
    """
    flags = [(m, m.training) for m in model.modules()]
    values = [(t, t.detach().clone()) for t in list(model.parameters()) + list(model.buffers())]
    grads = [(p, p.grad) for p in model.parameters()]
    devices = sorted({
        t.device.index for t, _ in values if t.device.type == "cuda" and t.device.index is not None
    })
    with torch.random.fork_rng(devices=devices):
        if train is not None:
            model.train(train)
        try:
            yield
        finally:
            for m, flag in flags:
                m.training = flag
            with torch.no_grad():
                for t, value in values:
                    t.copy_(value)
            for p, g in grads:
                p.grad = g


def signals(
    model: nn.Module,
    inputs: Any,
    targets: Any = None,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    train: bool | None = None,
) -> list[Signal]:
    """Forward and backward signal of every layer of ``model`` on one batch, in the order the
    layers run.

    ``inputs`` is a tensor, a tuple of positional arguments or a dict of keyword
    arguments; the loss is ``loss_fn(model(inputs), targets)``, or, without a
    ``loss_fn``, the model's own (a scalar output, or a ``loss`` entry of the
    output as Hugging Face models return). Layers are the modules with parameters
    of their own and the activation modules (:data:`ACTIVATION_TYPES`); the order
    is that of the forward pass, found by hooks, not of ``named_parameters()``.
    With an ``optimizer`` (over the model's parameters), one step is taken on the
    measured gradient to give each layer's ``update_ratio``, then undone together
    with the optimizer's state. Gradients are taken with :func:`torch.autograd.grad`
    and the user's backward hooks are silenced, so nothing the user registered
    fires and ``.grad`` stays untouched; see :func:`preserved` for what else is restored.
    """
    model = checks.module(model)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            "model has no parameters that require grad: there is no gradient to measure"
        )
    if loss_fn is not None and not callable(loss_fn):
        raise ValueError(
            f"loss_fn must be callable (outputs, targets) -> scalar or None, got {loss_fn!r}"
        )
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(
            f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}"
        )
    layers, grad_of, steps = _measure(model, inputs, targets, loss_fn, optimizer, train)
    out = []
    for module, layer in layers.items():
        weights = [p for _, p in _own_weights(module)]
        wgrads = [grad_of.get(p) for p in weights]
        got = [g for g in wgrads if g is not None]
        w_norm = _joint_norm(weights) if weights else None
        step = [steps[p] for p in weights if p in steps]
        out.append(Signal(
            name=layer.name or type(module).__name__,
            kind=type(module).__name__,
            calls=layer.calls,
            input_rms=_sqrt(layer.mean("input_ms")),
            input_spread=layer.mean("input_spread"),
            output_rms=_sqrt(layer.mean("output_ms")),
            output_spread=layer.mean("output_spread"),
            backward=_sqrt(layer.backward_sq),
            weight_norm=w_norm,
            weight_grad=_joint_norm(got) if got else None,
            update_ratio=_std_ratio(step, weights) if step else None,
            saturated=layer.mean("saturated"),
            dead=layer.mean("dead"),
        ))
    return out


def _std_ratio(steps: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> float | None:
    """std(step) / std(weights) over all of a layer's weights (the update-to-data ratio);
    float64."""
    step = torch.cat([s.detach().double().reshape(-1) for s in steps])
    w = torch.cat([p.detach().double().reshape(-1) for p in weights])
    if step.numel() < 2 or float(w.std()) == 0:
        return None
    return float(step.std() / w.std())


def _measure(model: nn.Module, inputs: Any, targets: Any, loss_fn: Callable | None,
             optimizer: torch.optim.Optimizer | None, train: bool | None
             ) -> tuple[dict[nn.Module, _Layer], dict[torch.Tensor, torch.Tensor | None], dict]:
    """The one forward and backward pass behind every measurement: hooks, gradients, an optional
    step."""
    names = {m: n for n, m in model.named_modules()}
    measured = [m for m in model.modules()
                if isinstance(m, ACTIVATION_TYPES)
                or any(p.requires_grad for p in m.parameters(recurse=False))]
    layers: dict[nn.Module, _Layer] = {}  # insertion order: the order of first calls
    cache: dict = {}

    def before(module: nn.Module, args: tuple, kwargs: dict) -> None:
        layer = layers.setdefault(module, _Layer(names[module], module))
        layer.calls += 1
        x = _first_tensor(args) if args else _first_tensor(kwargs)
        if x is None:
            return
        x = x.detach()
        n = float(x.numel())
        layer.add("input_ms", _rms(x) ** 2, n)
        layer.add("input_spread", _spread(x))
        # before the module runs: an in-place one overwrites x
        if isinstance(module, ACTIVATION_TYPES):
            saturated, dead = _activation_shares(module, x, _SATURATED_BELOW, cache)
            if isinstance(module, SATURATING):
                layer.add("saturated", saturated, n)
            else:
                layer.add("dead", dead)
        else:
            layer.add("dead", _all_zero_share(x == 0))

    def after(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        layer = layers[module]
        y = _first_tensor(output)
        if y is None:
            return
        layer.add("output_ms", _rms(y) ** 2, float(y.numel()))
        layer.add("output_spread", _spread(y))
        if y.requires_grad:
            y.register_hook(layer.grad_hook)

    handles = []
    for m in measured:
        handles.append(m.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(m.register_forward_hook(after, with_kwargs=True))
    params = [p for p in model.parameters() if p.requires_grad]
    with preserved(model, train), _user_backward_hooks_off(model):
        try:
            with torch.enable_grad():
                output = call(model, inputs)
                loss = _loss(output, targets, loss_fn)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        grad_of: dict[torch.Tensor, torch.Tensor | None] = {
            p: g for p, g in zip(params, grads, strict=True)
        }
        steps = _optimizer_steps(optimizer, grad_of) if optimizer is not None else {}
    return layers, grad_of, steps


def _sqrt(x: float | None) -> float | None:
    return None if x is None else math.sqrt(x)


def _joint_norm(tensors: Sequence[torch.Tensor]) -> float:
    return math.sqrt(sum(safe_norm(t) ** 2 for t in tensors))


def _loss(output: Any, targets: Any, loss_fn: Callable | None) -> torch.Tensor:
    if loss_fn is not None:
        loss = loss_fn(output, targets)
    elif isinstance(output, torch.Tensor):
        loss = output
    else:
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if loss is None:
            raise ValueError("loss_fn is None and the model's output has no 'loss': pass a loss_fn")
    return check_loss(loss)


def check_loss(loss: object) -> torch.Tensor:
    """``loss`` if it is a scalar tensor that depends on a parameter; otherwise a ValueError saying
    what is wrong (the one check every measurement makes of a user's loss)."""
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(
            f"loss_fn must return a scalar tensor, got {shape}; reduce it (e.g. .mean())"
        )
    if not loss.requires_grad:
        raise ValueError("the loss does not depend on any parameter that requires grad")
    return loss


def _optimizer_steps(
    optimizer: torch.optim.Optimizer, grad_of: dict
) -> dict[torch.Tensor, torch.Tensor]:
    """One optimizer step on the measured gradients; returns each parameter's change (the caller
    restores)."""
    state = copy.deepcopy(optimizer.state_dict())
    held = [p for group in optimizer.param_groups for p in group["params"]]
    before = {p: p.detach().clone() for p in held}
    for p in held:
        g = grad_of.get(p)
        p.grad = None if g is None else g.detach().clone()
    try:
        optimizer.step()
        return {p: p.detach() - before[p] for p in held}
    finally:
        optimizer.load_state_dict(state)


def weight_names(model: nn.Module) -> list[str]:
    """Names of the model's weight matrices (parameters with two or more dimensions), in order."""
    return [n for n, p in model.named_parameters() if p.dim() >= 2 and p.requires_grad]


def _check_model(model: object) -> None:
    model = checks.module(model)
    if not any(True for _ in model.parameters()):
        raise ValueError("model has no parameters: there is no gradient to measure")


def grad_norms(
    model: nn.Module,
    inputs: Any,
    targets: Any,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    *,
    train: bool | None = None,
) -> dict[str, float]:
    """``||dL/dW||`` for every weight matrix W (parameters with 2+ dimensions), in forward order.

    The weight-gradient view of :func:`signals` (same pass, same norm), keyed by
    parameter name; a matrix that does not influence the loss reads 0.0.
    ``train`` temporarily sets the mode (``None`` keeps the model's own); it
    matters for batch normalization.
    """
    _check_model(model)
    names = {p: n for n, p in model.named_parameters()}
    matrices = [p for p in names if p.dim() >= 2 and p.requires_grad]
    if not matrices:
        raise ValueError("model has no weight matrices (parameters with 2+ dimensions) to measure")
    layers, grad_of, _ = _measure(model, inputs, targets, loss_fn, None, train)
    ran = [
        p for m in layers for p in m.parameters(recurse=False) if p.dim() >= 2 and p.requires_grad
    ]
    # layers that never ran (or are not hooked) come last
    order = list(dict.fromkeys(ran + matrices))
    return {names[p]: 0.0 if (g := grad_of.get(p)) is None else safe_norm(g) for p in order}


def _activation_pass(model: nn.Module, inputs: Any, train: bool | None
                     ) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """One forward pass without gradients: (module, its input, its output) for every activation
    module, in forward order. The input is copied before the module runs (an in-place activation
    overwrites it); the model is left as it was (:func:`preserved`)."""
    inputs_of: dict[nn.Module, torch.Tensor] = {}
    seen: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

    def keep(module: nn.Module, args: tuple) -> None:
        inputs_of[module] = args[0].detach().clone()

    def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        seen.append((module, inputs_of.pop(module), output.detach()))

    handles = []
    for m in model.modules():
        if isinstance(m, ACTIVATION_TYPES):
            handles += [m.register_forward_pre_hook(keep), m.register_forward_hook(record)]
    if not handles:
        raise ValueError("model has no activation modules of a known type: "
                         + ", ".join(t.__name__ for t in ACTIVATION_TYPES))
    try:
        with preserved(model, train), torch.no_grad():
            call(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def activation_stats(
    model: nn.Module,
    inputs: Any,
    *,
    train: bool | None = None,
) -> list[dict[str, float | str]]:
    """Statistics of every activation module's output on one batch, in forward order (no
    backward pass).

    For each layer: ``name``, ``kind`` (the module class), ``mean`` and ``std`` of
    its output, ``saturated`` - the fraction of (example, unit) entries whose
    derivative is below a tenth of the activation's largest
    derivative - and ``dead`` - the fraction of units whose derivative is exactly
    zero for every example in the batch (a dead rectifier passes no gradient).
    For rectifiers ``saturated`` is simply the share of inactive entries (about
    half in a healthy layer), since they saturate on one side by design.
    Units are the last dimension (an MLP's features; channels for feature maps).
    """
    _check_model(model)
    names = {m: n for n, m in model.named_modules()}
    cache: dict = {}
    stats: list[dict[str, float | str]] = []
    for module, x, out in _activation_pass(model, inputs, train):
        saturated, dead = _activation_shares(module, x, _SATURATED_BELOW, cache)
        out = out.float()
        stats.append({"name": names[module], "kind": type(module).__name__,
                      "mean": float(out.mean()),
                      "std": float(out.std()) if out.numel() > 1 else 0.0,
                      "saturated": saturated, "dead": dead})
    return stats


def gradient_profile(
    *,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    depth: int,
    width: int,
    activation: str,
    init: str | models.Init,
    norm: str | None = None,
    seeds: Sequence[int] = (0,),
) -> np.ndarray:
    """Per-layer gradient norms ||dL/dW_l|| of freshly built networks, one row per seed.

    Builds ``models.mlp`` with the given shape for each seed (torch's global
    generator is seeded with it), measures the gradient norms of the cross-entropy on
    ``(inputs, targets)`` (class indices; as :func:`grad_norms` does, in training mode)
    and returns an array of shape ``(len(seeds), depth + 1)``: hidden layers from the
    input, read-out last.

    Without batch normalization all seeds are measured in one pass of
    :mod:`vanishing.sweeps`, which gives the same numbers (bit for bit on the build
    machine); with it (it couples the examples of a batch) one network at a time.
    """
    if len(seeds) == 0:
        raise ValueError("seeds must hold at least one seed")
    if targets.dtype != torch.long:
        raise ValueError(f"targets must be class indices (dtype long), got {targets.dtype}")
    out_features = int(targets.max()) + 1
    nets = []
    for s in seeds:
        torch.manual_seed(int(s))
        nets.append(models.mlp(
            in_features=inputs.shape[1], out_features=out_features, depth=depth, width=width,
            activation=activation, init=init, norm=norm,
        ).to(inputs.device))
    from . import sweeps  # here, not at the top: sweeps imports train, which imports probes

    if norm != "batch":
        return sweeps.grad_norms_batched(sweeps.stack_mlps(nets), inputs, targets).numpy()
    return np.asarray(
        [list(grad_norms(net, inputs, targets, nn.functional.cross_entropy, train=True).values())
         for net in nets], dtype=float)


def inactive_fraction(
    model: nn.Module, inputs: torch.Tensor, *, train: bool | None = None
) -> list[float]:
    """Per activation layer: the fraction of units whose input is <= 0 for every example of
    ``inputs``.

    For a ReLU such a unit is dead: it outputs zero and passes no gradient for
    the whole batch. For a leaky ReLU it is merely "off": it still passes a
    gradient scaled by the leak, so it can come back.
    """
    model = checks.module(model)
    seen = [x for _, x, _ in _activation_pass(model, inputs, train)]
    return [float((z.reshape(-1, z.shape[-1]) <= 0).all(dim=0).float().mean()) for z in seen]


def gradient_predictiveness(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    etas: Sequence[float],
) -> dict[str, np.ndarray]:
    """Walk along the negative gradient and record how the loss and the gradient change.

    At parameters theta with gradient g of the cross-entropy L on ``(inputs, targets)``,
    for each step size eta it evaluates the loss L(theta - eta g) and the gradient change
    ||grad L(theta - eta g) - g||.
    Returns ``loss`` (len(etas),), ``grad_change`` (len(etas),), ``grad_norm``
    (a scalar array) and ``beta``: the largest ratio ||grad change|| / ||eta g||, an
    effective smoothness constant along this direction (Santurkar et al. 2018).
    The model is measured in train mode (batch statistics) and left unchanged.
    """
    if len(etas) == 0 or any(not e > 0 for e in etas):
        raise ValueError(
            f"etas must be a non-empty sequence of positive step sizes, got {list(etas)!r}"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]

    def grad_at() -> tuple[float, list[torch.Tensor]]:
        loss = nn.functional.cross_entropy(model(inputs), targets)
        return float(loss.detach()), [g.detach() for g in torch.autograd.grad(loss, params)]

    with preserved(model, train=True):
        _, g0 = grad_at()
        gnorm = math.sqrt(sum(float((g**2).sum()) for g in g0))
        losses, changes, ratios = [], [], []
        for eta in etas:
            with torch.no_grad():
                for p, s, g in zip(params, saved, g0, strict=True):
                    p.copy_(s - eta * g)
            loss, g1 = grad_at()
            change = math.sqrt(
                sum(float(((a - b) ** 2).sum()) for a, b in zip(g1, g0, strict=True))
            )
            losses.append(loss)
            changes.append(change)
            ratios.append(change / (eta * gnorm) if gnorm > 0 else 0.0)
    return {
        "loss": np.asarray(losses),
        "grad_change": np.asarray(changes),
        "grad_norm": np.asarray(gnorm),
        "beta": np.asarray(max(ratios)),
    }
