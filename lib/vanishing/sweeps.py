"""Sweeps over many small networks at once: K MLPs run as one batched tensor program.

The book's slowest cells are sweeps - depth x activation x initialization x
seed - in which each configuration is a small network, measured or trained on
its own. Run one at a time, such a sweep spends much of its time in Python and
in per-call overhead rather than in arithmetic. Here the K networks of one
depth are *stacked*: the weight matrices of layer ``l`` of all K networks
become one tensor of shape ``(K, fan_out, fan_in)`` and every layer is one
batched matrix product (:func:`torch.baddbmm`) for all K networks together.

The stacked networks are exact copies of the ones :func:`vanishing.models.mlp`
builds - :func:`stack_mlps` copies their parameters, so no initialization logic
is duplicated - and the results agree with the plain loop
(:func:`vanishing.probes.grad_norms`, :func:`vanishing.train.train`) to float32
rounding:

* :func:`stack_mlps` - K built MLPs of one shape -> a :class:`StackedMLP`;
* :func:`grad_norms_batched` - per-network, per-layer gradient norms, ``(K, depth + 1)``;
* :func:`train_batched` - SGD (or SGD with momentum) for all K networks at once, on
  shared minibatches or on each network's own; :func:`histories` splits its record
  into K histories shaped like ``train.train``'s;
* :func:`build_mlp` - ``models.mlp`` under its own seed, without touching the global RNG;
* :func:`depth_sweep` - the whole grid, as a tidy list of dict rows, batched or
  (``method="loop"``) one network at a time for reference.

Everything runs on the device the stacked parameters live on (CPU or CUDA);
inputs are moved there.

Gradients are computed by hand-written backpropagation through the stack
(:meth:`StackedMLP._backprop`), not by autograd: each step calls the kernel autograd
itself would call (``bmm``, ``sigmoid_backward``, ``native_layer_norm_backward``, ...)
with ``out=`` into buffers the stack keeps between steps. So the numbers are
autograd's (on the build machine the book's gradient sweeps agree with the loop to
the last bit), without a graph to build and without fresh megabyte-sized tensors
at every layer of every step.

What stacking buys depends on how much of the loop is overhead, which
``bench/bench_sweeps.py`` measures on the book's own sweeps (one CPU thread): about
3x for 08_residual's training sweep (width 32, where the loop is mostly per-call
overhead), about 2x for 05_activations' (width 64, five different activations in a
stack of five), and nothing for gradient norms on a 256-example batch, where building
the networks with ``models.mlp`` (random numbers for every weight) and the matrix
products themselves dominate and stacking removes neither. On a GPU, where the loop
is bound by kernel launches, the stacked form launches K times fewer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from . import models, probes
from . import train as train_mod

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "METHODS",
    "StackedMLP",
    "build_mlp",
    "stack_mlps",
    "grad_norms_batched",
    "train_batched",
    "histories",
    "depth_sweep",
]

#: Losses the batched functions compute per network (the names :func:`vanishing.train.train` uses).
LOSSES = ("cross_entropy", "mse")
#: Optimizers :func:`train_batched` implements exactly as torch does (plain SGD; SGD with
#: momentum 0.9).
OPTIMIZERS = ("sgd", "momentum")
#: How :func:`depth_sweep` runs a grid: stacked, or one network at a time (the reference).
METHODS = ("batched", "loop")


aten = torch.ops.aten

#: forward(z, out) writes phi(z) into ``out``; backward(grad, z, a, out) writes grad * phi'(z)
#: into ``out`` given z and a = phi(z).
Kernels = tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]


def _kernels(module: nn.Module) -> Kernels:
    """The forward and backward kernels of one activation module.

    They are the aten kernels autograd itself runs for these modules (``sigmoid_backward``
    from the output, ``gelu_backward`` from the input, ...), called with ``out=`` so that a
    stacked pass writes into buffers it reuses instead of allocating afresh: the stacked
    gradients are bit for bit what autograd computes on the same stack.
    """
    if isinstance(module, nn.Sigmoid):
        return (lambda z, o: aten.sigmoid.out(z, out=o),
                lambda g, z, a, o: aten.sigmoid_backward.grad_input(g, a, grad_input=o))
    if isinstance(module, nn.Tanh):
        return (lambda z, o: aten.tanh.out(z, out=o),
                lambda g, z, a, o: aten.tanh_backward.grad_input(g, a, grad_input=o))
    if isinstance(module, nn.ReLU):
        return (lambda z, o: aten.clamp_min.out(z, 0, out=o),
                lambda g, z, a, o: aten.threshold_backward.grad_input(g, a, 0, grad_input=o))
    if isinstance(module, nn.LeakyReLU):
        slope = module.negative_slope
        return (lambda z, o: aten.leaky_relu.out(z, slope, out=o),
                lambda g, z, a, o: aten.leaky_relu_backward.grad_input(
                    g, z, slope, False, grad_input=o
                ))
    if isinstance(module, nn.GELU):
        approx = module.approximate
        return (lambda z, o: aten.gelu.out(z, approximate=approx, out=o),
                lambda g, z, a, o: aten.gelu_backward.grad_input(
                    g, z, approximate=approx, grad_input=o
                ))
    if isinstance(module, nn.SiLU):
        return (lambda z, o: aten.silu.out(z, out=o),
                lambda g, z, a, o: aten.silu_backward.grad_input(g, z, grad_input=o))
    if isinstance(module, nn.Identity):
        return (lambda z, o: o.copy_(z), lambda g, z, a, o: o.copy_(g))
    raise ValueError(
        f"activation {module!r} has no stacked kernels; allowed: {', '.join(models.ACTIVATIONS)}"
    )


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _activation_name(module: nn.Module) -> str:
    # The models.ACTIVATIONS name of an activation module (its repr holds its settings, e.g. the
    # slope).
    for name, make in models.ACTIVATIONS.items():
        if repr(make()) == repr(module):
            return name
    return repr(module)


@dataclass
class StackedMLP:
    """K MLPs of one shape with their parameters stacked along a leading axis of size K.

    ``weights[l]`` has shape ``(K, fan_out, fan_in)`` and ``biases[l]`` ``(K, fan_out)``
    for the ``depth`` hidden layers and then the read-out (input to output, as
    :meth:`vanishing.models.MLP.linears`). ``norm_weights``/``norm_biases`` hold the
    layer-normalization gains and shifts ``(K, width)`` per hidden layer (empty
    without normalization). ``groups`` lists runs ``(start, stop, module)`` of
    consecutive networks that share an activation. Build one with :func:`stack_mlps`.
    """

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    norm_weights: list[torch.Tensor]
    norm_biases: list[torch.Tensor]
    norm_eps: float
    residual: list[bool]
    groups: list[tuple[int, int, nn.Module]]
    activations: list[str]
    # Buffers a pass writes into, kept between passes (see _buffer); never part of the public state.
    _work: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def size(self) -> int:
        """K, the number of stacked networks."""
        return self.weights[0].shape[0]

    @property
    def depth(self) -> int:
        """Number of hidden layers (the read-out not counted)."""
        return len(self.weights) - 1

    @property
    def device(self) -> torch.device:
        """Where the stacked parameters live; inputs are moved here."""
        return self.weights[0].device

    def parameters(self) -> list[torch.Tensor]:
        """Every stacked parameter tensor (leading axis K), in a fixed order."""
        return [*self.weights, *self.biases, *self.norm_weights, *self.norm_biases]

    def _buffer(
        self, key: tuple, shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """A reusable buffer of ``shape`` and its views, one per activation group.

        A training step or an evaluation chunk needs the same tensors every time. Reusing
        them saves the allocator's work and the page faults of touching fresh memory (a
        stack's activations are megabytes, where one network's fit in a few kilobytes), and
        the group views are sliced once instead of at every layer of every step.
        """
        entry = self._work.get(key)
        if entry is None or entry[0].shape != shape:
            t = torch.empty(shape, dtype=self.weights[0].dtype, device=self.device)
            entry = self._work[key] = (t, [t[start:stop] for start, stop, _ in self.groups])
        return entry

    def _kernels(self) -> list[Kernels]:
        if "kernels" not in self._work:
            self._work["kernels"] = [_kernels(act) for _, _, act in self.groups]
        return self._work["kernels"]

    def _pass(self, x: torch.Tensor, *, keep: bool) -> tuple[torch.Tensor, list[tuple]]:
        """Outputs (K, B, out) of all K networks on a shared batch ``x`` (B, in), or on one batch
        each (K, B, in), without autograd.

        With ``keep`` every layer's tensors are kept for :meth:`_backprop` (in buffers of their
        own); without, two sets of buffers alternate, enough for evaluation.
        """
        k, rows = self.size, x.shape[-2]
        kernels = self._kernels()
        h = x if x.dim() == 3 else x.expand(k, *x.shape)
        saved: list[tuple] = []
        for i in range(self.depth):
            w = self.weights[i]
            shape = (k, rows, w.shape[1])
            # evaluation buffers apart from a step's, which differ in shape
            slot = i if keep else -1 - i % 2
            z, z_parts = self._buffer(("z", slot), shape)
            torch.baddbmm(self.biases[i].unsqueeze(1), h, w.transpose(1, 2), out=z)
            u, u_parts, stats = z, z_parts, None
            if self.norm_weights:
                zn, mean, rstd = aten.native_layer_norm(z, [shape[2]], None, None, self.norm_eps)
                u, u_parts = self._buffer(("u", slot), shape)
                torch.addcmul(
                    self.norm_biases[i].unsqueeze(1), zn, self.norm_weights[i].unsqueeze(1), out=u
                )
                stats = (zn, mean, rstd)
            a, a_parts = self._buffer(("a", slot), shape)
            for (forward, _), u_part, a_part in zip(kernels, u_parts, a_parts, strict=True):
                forward(u_part, a_part)
            h_out = (
                torch.add(h, a, out=self._buffer(("h", slot), shape)[0]) if self.residual[i] else a
            )
            if keep:
                saved.append((h, z, u_parts, stats, a_parts))
            h = h_out
        out = torch.baddbmm(self.biases[-1].unsqueeze(1), h, self.weights[-1].transpose(1, 2))
        saved.append((h,))
        return out, saved

    def _backprop(
        self, x: torch.Tensor, y: torch.Tensor, loss: str, *, weights_only: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-network losses (K,) and gradients on a batch, by hand-written backpropagation.

        ``x`` is a batch shared by all networks (B, in) or one per network (K, B, in), with
        targets ``y`` to match ((B,) or (K, B) labels; (B, out) or (K, B, out) for mse).

        The gradients come in the order of :meth:`parameters` (only the weights with
        ``weights_only``). They live in this stack's buffers: use them before the next pass.
        Each step is the kernel autograd would run, so the result equals autograd's on the
        stack, at a fraction of its bookkeeping: no graph, no fresh tensors per step.
        """
        kernels = self._kernels()
        out, saved = self._pass(x, keep=True)
        rows = x.shape[-2]
        if loss == "cross_entropy":
            logp = out.log_softmax(dim=-1)
            mask = F.one_hot(y, out.shape[-1]).to(out.dtype)
            losses = -(logp * mask).sum(dim=-1).mean(dim=1)
            g = aten._log_softmax_backward_data(
                (mask * (-1.0 / rows)).expand_as(logp).contiguous(), logp, -1, logp.dtype
            )
        else:
            diff = out - y
            losses = diff.pow(2).flatten(1).mean(dim=1)
            g = diff * (2.0 / diff[0].numel())
        depth = self.depth
        g_w: list[torch.Tensor] = [None] * (depth + 1)  # type: ignore[list-item]
        g_b: list[torch.Tensor] = [None] * (depth + 1)  # type: ignore[list-item]
        g_gain: list[torch.Tensor] = [None] * len(self.norm_weights)  # type: ignore[list-item]
        g_shift: list[torch.Tensor] = [None] * len(self.norm_weights)  # type: ignore[list-item]
        skip = None  # gradient reaching a residual block's output, passed straight to its input
        for i in range(depth, -1, -1):
            h_in = saved[i][0]
            g_w[i] = torch.bmm(
                g.transpose(1, 2), h_in, out=self._buffer(("gw", i), self.weights[i].shape)[0]
            )
            if not weights_only:
                g_b[i] = torch.sum(g, dim=1, out=self._buffer(("gb", i), self.biases[i].shape)[0])
            if i == 0:
                break
            # Gradient at the output of hidden layer i - 1 (= the input of layer i).
            g_h, g_h_parts = self._buffer(("gh", i % 2), h_in.shape)
            torch.bmm(g, self.weights[i], out=g_h)
            if skip is not None:
                g_h.add_(skip)
            _, z, u_parts, stats, a_parts = saved[i - 1]
            skip = g_h if self.residual[i - 1] else None
            g_u, g_u_parts = self._buffer(("gu", i % 2), h_in.shape)
            for (_, backward), g_part, u_part, a_part, out_part in zip(
                kernels, g_h_parts, u_parts, a_parts, g_u_parts, strict=True
            ):
                backward(g_part, u_part, a_part, out_part)
            if stats is None:
                g = g_u
                continue
            zn, mean, rstd = stats
            if not weights_only:
                g_gain[i - 1] = (g_u * zn).sum(dim=1)
                g_shift[i - 1] = g_u.sum(dim=1)
            g_zn = g_u * self.norm_weights[i - 1].unsqueeze(1)
            g = aten.native_layer_norm_backward(g_zn, z, [z.shape[2]], mean, rstd, None, None,
                                                [True, False, False])[0]
        if weights_only:
            return losses, g_w
        return losses, [*g_w, *g_b, *g_gain, *g_shift]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Outputs of all K networks: ``inputs`` (B, in) shared by all, or (K, B, in) one batch
        each.

        Returns a tensor of shape (K, B, out).
        """
        k, fan_in = self.size, self.weights[0].shape[2]
        x = inputs.to(device=self.device, dtype=self.weights[0].dtype)
        if x.dim() == 2 and x.shape[1] == fan_in:
            x = x.expand(k, *x.shape)
        elif not (x.dim() == 3 and x.shape[0] == k and x.shape[2] == fan_in):
            raise ValueError(
                f"inputs must have shape (batch, {fan_in}) or ({k}, batch, {fan_in}), "
                f"got {tuple(x.shape)}"
            )
        for i in range(self.depth):
            z = torch.baddbmm(self.biases[i].unsqueeze(1), x, self.weights[i].transpose(1, 2))
            if self.norm_weights:
                z = F.layer_norm(z, z.shape[-1:], eps=self.norm_eps)
                z = z * self.norm_weights[i].unsqueeze(1) + self.norm_biases[i].unsqueeze(1)
            if len(self.groups) == 1:
                a = self.groups[0][2](z)
            else:
                # split's backward is one concatenation; slicing would build a zero tensor per
                # group.
                parts = z.split([stop - start for start, stop, _ in self.groups])
                a = torch.cat([act(p) for p, (_, _, act) in zip(parts, self.groups, strict=True)])
            x = x + a if self.residual[i] else a
        return torch.baddbmm(self.biases[-1].unsqueeze(1), x, self.weights[-1].transpose(1, 2))

    __call__ = forward

    def to(self, device: torch.device | str) -> StackedMLP:
        """A copy with every stacked parameter on ``device`` (e.g. ``vg.device()``), ready for
        training."""
        dev = torch.device(device)

        def move(ts: list[torch.Tensor]) -> list[torch.Tensor]:
            return [t.detach().to(dev).requires_grad_(True) for t in ts]

        return StackedMLP(
            weights=move(self.weights),
            biases=move(self.biases),
            norm_weights=move(self.norm_weights),
            norm_biases=move(self.norm_biases),
            norm_eps=self.norm_eps,
            residual=list(self.residual),
            groups=list(self.groups),
            activations=list(self.activations),
        )

    def copy_to(self, nets: Sequence[models.MLP]) -> None:
        """Write the stacked parameters back into K MLPs of the same shape (e.g. after training)."""
        if len(nets) != self.size:
            raise ValueError(f"nets must hold {self.size} MLPs, got {len(nets)}")
        with torch.no_grad():
            for k, net in enumerate(nets):
                for i, lin in enumerate(net.linears()):
                    lin.weight.copy_(self.weights[i][k])
                    lin.bias.copy_(self.biases[i][k])
                for i, block in enumerate(net.blocks):
                    if self.norm_weights:
                        norm = cast(nn.LayerNorm, block.norm)
                        norm.weight.copy_(self.norm_weights[i][k])
                        norm.bias.copy_(self.norm_biases[i][k])


def _signature(net: models.MLP) -> tuple:
    lins = net.linears()
    norms = tuple(type(b.norm).__name__ for b in net.blocks)
    return (
        tuple(tuple(lin.weight.shape) for lin in lins),
        tuple(lin.bias is not None for lin in lins),
        norms,
        tuple(b.residual for b in net.blocks),
        lins[0].weight.dtype,
        lins[0].weight.device,
    )


def stack_mlps(nets: Sequence[models.MLP]) -> StackedMLP:
    """Stack K MLPs built by :func:`vanishing.models.mlp` into one :class:`StackedMLP`.

    The networks must share their shape (depth, widths, normalization, residual
    flags, dtype, device); they may differ in anything that lives in the
    parameters (seed, initialization) and in their activation. Supported
    normalizations: none and ``"layer"`` (batch normalization couples the
    examples of a batch and keeps running statistics; use the plain loop for it).
    The parameters are copied; the networks themselves are left untouched.
    Put networks with the same activation next to each other: each run of equal
    activations costs one extra split and concatenation per layer.
    """
    if isinstance(nets, nn.Module) or not isinstance(nets, Sequence) or len(nets) == 0:
        raise ValueError(f"nets must be a non-empty list of MLPs, got {type(nets).__name__}")
    for i, net in enumerate(nets):
        if not isinstance(net, models.MLP):
            raise ValueError(f"nets[{i}] must be a vanishing.models.MLP, got {type(net).__name__}")
        for block in net.blocks:
            if not isinstance(block.norm, (nn.Identity, nn.LayerNorm)):
                raise ValueError(
                    f"nets[{i}] has norm {type(block.norm).__name__}; "
                    "stack_mlps supports norm=None and 'layer'"
                )
            if isinstance(block.norm, nn.LayerNorm) and not block.norm.elementwise_affine:
                raise ValueError(
                    f"nets[{i}]: stack_mlps needs LayerNorm with elementwise_affine=True"
                )
        if any(lin.bias is None for lin in net.linears()):
            raise ValueError(f"nets[{i}] has a Linear layer without bias; stack_mlps needs biases")
    first = _signature(nets[0])
    for i, net in enumerate(nets[1:], start=1):
        if _signature(net) != first:
            raise ValueError(
                f"nets[{i}] differs in shape, normalization, residual flags, dtype or device "
                "from nets[0]; stack only networks of one architecture (group a sweep by depth)"
            )

    def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([t.detach() for t in tensors]).clone().requires_grad_(True)

    lins = [net.linears() for net in nets]
    n_layers = len(lins[0])
    weights = [stack([ls[i].weight for ls in lins]) for i in range(n_layers)]
    biases = [stack([ls[i].bias for ls in lins]) for i in range(n_layers)]
    layer_norm = isinstance(nets[0].blocks[0].norm, nn.LayerNorm)
    depth = len(nets[0].blocks)

    def norm_of(net: models.MLP, i: int) -> nn.LayerNorm:
        return cast(nn.LayerNorm, net.blocks[i].norm)

    norm_weights = (
        [stack([norm_of(net, i).weight for net in nets]) for i in range(depth)]
        if layer_norm else []
    )
    norm_biases = (
        [stack([norm_of(net, i).bias for net in nets]) for i in range(depth)]
        if layer_norm else []
    )
    eps = float(norm_of(nets[0], 0).eps) if layer_norm else 0.0
    acts = [cast(nn.Module, net.blocks[0].act) for net in nets]
    groups: list[tuple[int, int, nn.Module]] = []
    for k, act in enumerate(acts):
        if groups and repr(groups[-1][2]) == repr(act):
            groups[-1] = (groups[-1][0], k + 1, groups[-1][2])
        else:
            groups.append((k, k + 1, act))
    return StackedMLP(
        weights=weights,
        biases=biases,
        norm_weights=norm_weights,
        norm_biases=norm_biases,
        norm_eps=eps,
        residual=[bool(b.residual) for b in nets[0].blocks],
        groups=groups,
        activations=[_activation_name(a) for a in acts],
    )


def _check_stacked(stacked: object) -> StackedMLP:
    if not isinstance(stacked, StackedMLP):
        raise ValueError(
            f"stacked must be a StackedMLP (see stack_mlps), got {type(stacked).__name__}"
        )
    return stacked


def _cross_entropy(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every (network, example), shape (K, B), from logits (K, B, C) and labels
    (B,).

    logsumexp minus the target's logit: the value F.cross_entropy computes (to float
    rounding), with kernels that are deterministic on CUDA too (nll_loss2d is not) and,
    on a CPU, several times faster than log_softmax over a last axis of ten classes.
    """
    mask = F.one_hot(labels, out.shape[-1]).to(out.dtype)
    return out.logsumexp(dim=-1) - (out * mask).sum(dim=-1)


def _check_data(
    inputs: object, targets: object, loss: str, stacked: StackedMLP, name: str = "data"
) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise ValueError(f"{name}: inputs and targets must be tensors")
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r} is unknown; allowed: {', '.join(LOSSES)}")
    if inputs.dim() != 2 or inputs.shape[1] != stacked.weights[0].shape[2]:
        raise ValueError(
            f"{name}: inputs must have shape (batch, {stacked.weights[0].shape[2]}), "
            f"got {tuple(inputs.shape)}"
        )
    n_out = stacked.weights[-1].shape[1]
    if len(targets) != len(inputs):
        raise ValueError(f"{name}: {len(inputs)} inputs but {len(targets)} targets")
    if loss == "cross_entropy" and (targets.dim() != 1 or targets.dtype != torch.long):
        raise ValueError(f"{name}: cross_entropy needs targets of shape (batch,) and dtype long")
    if loss == "mse" and tuple(targets.shape) != (len(inputs), n_out):
        raise ValueError(
            f"{name}: mse needs targets of shape ({len(inputs)}, {n_out}), "
            f"got {tuple(targets.shape)}"
        )
    device = stacked.device
    x = inputs.to(device=device, dtype=stacked.weights[0].dtype)
    y = (
        targets.to(device=device) if loss == "cross_entropy"
        else targets.to(device=device, dtype=x.dtype)
    )
    return x, y


#: Elements of the (K, rows, width) activations an evaluation pass holds at once (8 MiB in float32):
#: enough rows for efficient matrix products, a bounded footprint however large the evaluation set.
EVAL_ELEMENTS = 2**21


def _evaluate(
    stacked: StackedMLP, x: torch.Tensor, y: torch.Tensor, loss: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss (K,) and, for classification, accuracy (K,) of every network on all of (x, y), in row
    chunks."""
    width = max(w.shape[1] for w in stacked.weights)
    rows = max(1, EVAL_ELEMENTS // (stacked.size * width))
    per_example, hits = [], []
    for start in range(0, len(x), rows):
        out, _ = stacked._pass(x[start:start + rows], keep=False)
        yc = y[start:start + rows]
        if loss == "cross_entropy":
            per_example.append(_cross_entropy(out, yc))
            hits.append(out.argmax(dim=-1) == yc)
        else:
            per_example.append((out - yc).pow(2).flatten(1))
    losses = torch.cat(per_example, dim=1).mean(dim=1)
    return losses, (torch.cat(hits, dim=1).float().mean(dim=1) if hits else None)


def grad_norms_batched(
    stacked: StackedMLP, inputs: torch.Tensor, targets: torch.Tensor, *, loss: str = "cross_entropy"
) -> torch.Tensor:
    """Norm of dLoss/dW for every weight matrix of every stacked network: shape (K, depth + 1),
    float64, on the CPU.

    Row ``k`` is what :func:`vanishing.probes.grad_norms` returns for network
    ``k`` on the same batch (input layer first, read-out last). The K losses are
    summed before one backward pass: the networks share no parameters, so the
    gradient of the sum with respect to network k's weights is the gradient of
    network k's own loss. The stacked parameters and their ``.grad`` are not changed.
    """
    stacked = _check_stacked(stacked)
    x, y = _check_data(inputs, targets, loss, stacked, name="inputs/targets")
    with torch.no_grad():
        _, grads = stacked._backprop(x, y, loss, weights_only=True)
    # In float64, as probes.grad_norms: squares of float32 entries below about 1e-20 would
    # underflow to zero.
    return torch.stack([g.detach().double().flatten(1).norm(dim=1) for g in grads], dim=1).cpu()


def train_batched(
    stacked: StackedMLP,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    steps: int,
    lr: float,
    batch_size: int | None = 64,
    optimizer: str = "sgd",
    loss: str = "cross_entropy",
    test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    eval_every: int = 10,
    clip: float | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    record_grad_norms: bool = False,
) -> dict[str, Any]:
    """Train all K stacked networks at once, in place, the way :func:`vanishing.train.train`
    trains one.

    Same arguments and schedule as ``train.train``: ``steps`` updates of
    ``optimizer`` (``"sgd"`` or ``"momentum"``) with learning rate ``lr``; minibatches of
    ``batch_size`` drawn with ``generator`` (``None``: torch's global generator;
    ``batch_size=None``: full batch); ``clip`` rescales each network's whole gradient
    to at most that norm; every ``eval_every`` steps (and at step 1) the loss and,
    for classification, the accuracy on all of ``data`` (and ``test_data``) are recorded,
    and with ``record_grad_norms`` the norm of each weight matrix's gradient on that
    step's batch (before clipping, as ``train.train`` records it).
    With one generator all K networks see the *same* minibatches (the plain loop matches
    this when every ``train.train`` call gets a generator seeded the same way); with a
    list of K generators network k draws its own minibatches with generator k, exactly
    as ``train.train(..., generator=generator[k])`` would.

    Returns ``step`` (list of ints), ``loss``/``acc``/``test_loss``/``test_acc``
    (tensors of shape (K, evaluations), on the CPU), ``grad_norms`` when recorded
    (float64, (K, evaluations, depth + 1), input layer first) and ``diverged_at`` (per network,
    the first step whose training loss was not finite, else ``None``). Where
    ``train.train`` raises ``FloatingPointError``, the batched form keeps training
    the other networks; the diverged one's values become nan or inf.
    """
    stacked = _check_stacked(stacked)
    k = stacked.size
    gens = generator if isinstance(generator, Sequence) and not isinstance(generator, str) else None
    if gens is not None:
        if len(gens) != k or not all(isinstance(g, torch.Generator) for g in gens):
            raise ValueError(
                f"generator: a list must hold one torch.Generator per network ({k}), "
                f"got {generator!r}"
            )
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be a torch.Generator, a list of {k} of them, or None, "
            f"got {type(generator).__name__}"
        )
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError("data must be a pair (inputs, targets)")
    x_all, y_all = _check_data(data[0], data[1], loss, stacked)
    n = len(x_all)
    train_mod.check_schedule(steps=steps, eval_every=eval_every, lr=lr, optimizer=optimizer,
                             allowed=OPTIMIZERS, clip=clip, batch_size=batch_size, n=n)
    sets = [("", x_all, y_all)]
    if test_data is not None:
        if not (isinstance(test_data, (tuple, list)) and len(test_data) == 2):
            raise ValueError("test_data must be a pair (inputs, targets) or None")
        sets.append(
            ("test_", *_check_data(test_data[0], test_data[1], loss, stacked, name="test_data"))
        )
    classify = loss == "cross_entropy"

    params = stacked.parameters()
    buffers: list[torch.Tensor] | None = None
    columns: dict[str, list[torch.Tensor]] = {}
    steps_seen: list[int] = []
    diverged = torch.zeros(k, dtype=torch.bool, device=stacked.device)
    diverged_at: list[int | None] = [None] * k

    def evaluate(step: int) -> None:
        steps_seen.append(step)
        with torch.no_grad():
            for prefix, x, y in sets:
                losses, hits = _evaluate(stacked, x, y, loss)
                columns.setdefault(prefix + "loss", []).append(losses)
                if classify:
                    # hits is a tensor under cross-entropy
                    columns.setdefault(prefix + "acc", []).append(cast(torch.Tensor, hits))

    norms: list[torch.Tensor] = []

    # None: torch's global generator, or one generator per network
    shared = generator if isinstance(generator, torch.Generator) else None

    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        # draw_batch ignores the generator for the full batch
        if gens is None or batch_size is None:
            return train_mod.draw_batch(x_all, y_all, batch_size, shared)
        batches = [train_mod.draw_batch(x_all, y_all, batch_size, g) for g in gens]
        return torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])

    for step in range(1, steps + 1):
        x, y = draw()
        with torch.no_grad():
            per_net, grads = stacked._backprop(x, y, loss)
        if record_grad_norms and (step % eval_every == 0 or step == 1):
            # float64, as train.train: squares of float32 entries below ~1e-19 would underflow.
            norms.append(torch.stack(
                [g.double().flatten(1).norm(dim=1) for g in grads[:stacked.depth + 1]], dim=1
            ))
        bad = ~torch.isfinite(per_net)
        if bool((bad & ~diverged).any()):
            for j in torch.nonzero(bad & ~diverged).flatten().tolist():
                diverged_at[j] = step
            diverged |= bad
        with torch.no_grad():
            if clip is not None:
                # clip_grad_norm_ per network: the norm of all its parameters' gradients together.
                total = torch.stack([g.flatten(1).norm(dim=1) for g in grads], dim=1).norm(dim=1)
                coef = (clip / (total + 1e-6)).clamp(max=1.0)
                grads = [g * coef.view(-1, *([1] * (g.dim() - 1))) for g in grads]
            if optimizer == "momentum":
                # torch.optim.SGD(momentum=0.9): the buffer starts as the first gradient.
                if buffers is None:
                    buffers = [g.clone() for g in grads]
                else:
                    torch._foreach_mul_(buffers, 0.9)
                    torch._foreach_add_(buffers, grads)
                torch._foreach_add_(params, buffers, alpha=-lr)
            else:
                torch._foreach_add_(params, grads, alpha=-lr)
        if step % eval_every == 0 or step == 1:
            evaluate(step)
    history: dict[str, Any] = {"step": steps_seen}
    for key, cols in columns.items():
        history[key] = torch.stack(cols, dim=1).float().cpu()
    if record_grad_norms:
        history["grad_norms"] = torch.stack(norms, dim=1).cpu()
    history["diverged_at"] = diverged_at
    return history


def histories(history: dict[str, Any]) -> list[dict[str, object]]:
    """Split what :func:`train_batched` returns into K per-network histories shaped like
    ``train.train``'s.

    Each holds ``step`` and plain lists of floats for ``loss``, ``acc``, ``test_loss``,
    ``test_acc`` (those recorded); ``grad_norms`` becomes a list with one list of
    per-layer norms per evaluation (input layer first); ``diverged_at`` is kept.
    """
    if not isinstance(history, dict) or "step" not in history or "diverged_at" not in history:
        raise ValueError("history must be the dict train_batched returns")
    out = []
    for k, diverged in enumerate(history["diverged_at"]):
        one: dict[str, object] = {"step": list(history["step"])}
        for key in ("loss", "acc", "test_loss", "test_acc", "grad_norms"):
            if key in history:
                one[key] = history[key][k].tolist()
        one["diverged_at"] = diverged
        out.append(one)
    return out


def build_mlp(*, seed: int, **kwargs: Any) -> models.MLP:
    """``models.mlp(**kwargs)`` built right after ``torch.manual_seed(seed)`` (as
    ``vg.seed(seed)`` would).

    The global random state is saved and restored, so building a sweep's
    networks does not shift the random numbers of whatever runs next. The
    network is built on the CPU; move it with ``.to(device)``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return models.mlp(**kwargs)


def _names(name: str, values: object, allowed: Sequence) -> list:
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty list, got {values!r}")
    for v in values:
        if v not in allowed:
            raise ValueError(f"{name}: {v!r} is unknown; allowed: {', '.join(map(str, allowed))}")
    return list(values)


def depth_sweep(
    *,
    depths: Sequence[int],
    activations: Sequence[str],
    inits: Sequence[str],
    seeds: Sequence[int],
    width: int,
    data: tuple[torch.Tensor, torch.Tensor],
    out_features: int,
    norm: str | None = None,
    residual: bool = False,
    loss: str = "cross_entropy",
    steps: int = 0,
    train_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    lr: float = 0.1,
    batch_size: int | None = 64,
    optimizer: str = "sgd",
    eval_every: int = 10,
    clip: float | None = None,
    batch_seed: int = 0,
    method: str = "batched",
    max_stack: int | None = None,
    device: torch.device | str | None = None,
) -> list[dict[str, object]]:
    """Measure (and optionally train) every MLP of a depth x activation x init x seed grid.

    Each network is ``build_mlp(seed=s, in_features=..., out_features=out_features,
    depth=d, width=width, activation=a, init=i, norm=norm, residual=residual)``.
    Its gradient norms at initialization are taken on ``data = (inputs, targets)``.
    With ``steps > 0`` it is then trained on ``train_data`` (default: ``data``) as
    :func:`vanishing.train.train` would, with minibatches drawn from a generator
    seeded with ``batch_seed`` - the same batches for every network.

    ``method="batched"`` stacks all networks of one depth (at most ``max_stack`` at
    a time) and runs them together; ``method="loop"`` builds and runs them one by
    one with ``probes.grad_norms`` and ``train.train``, the reference the batched
    form must agree with. ``device`` (e.g. ``vg.device()``) defaults to the CPU; the
    networks are built on the CPU under their seeds and then moved, so a sweep gives
    the same initial weights on every device.

    Returns one dict per network, in grid order (depth, activation, init, seed):
    ``depth``, ``activation``, ``init``, ``seed``, ``grad_norms`` (list, input layer
    first) and, when trained, ``step``, ``loss`` (list per evaluation), ``acc`` (for
    cross-entropy), ``final_loss``, ``final_acc`` and ``diverged_at`` (the loop stops
    a diverging network at that step; the batched form records it and goes on).
    """
    depths = (
        list(depths) if isinstance(depths, Sequence) and not isinstance(depths, str) else depths
    )
    if not isinstance(depths, list) or len(depths) == 0:
        raise ValueError(f"depths must be a non-empty list of positive ints, got {depths!r}")
    for d in depths:
        _positive_int("depths", d)
    activations = _names("activations", activations, list(models.ACTIVATIONS))
    inits = _names("inits", inits, models.INITS)
    if isinstance(seeds, str) or not isinstance(seeds, Sequence) or len(seeds) == 0:
        raise ValueError(f"seeds must be a non-empty list of non-negative ints, got {seeds!r}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"seeds: {s!r} is not a non-negative int")
    _positive_int("width", width)
    _positive_int("out_features", out_features)
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; allowed: {', '.join(METHODS)}")
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r} is unknown; allowed: {', '.join(LOSSES)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if max_stack is not None:
        _positive_int("max_stack", max_stack)
    if isinstance(batch_seed, bool) or not isinstance(batch_seed, int) or batch_seed < 0:
        raise ValueError(f"batch_seed must be a non-negative int, got {batch_seed!r}")
    if not (
        isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor)
    ):
        raise ValueError("data must be a pair (inputs, targets) of tensors")
    if data[0].dim() != 2:
        raise ValueError(
            f"data: inputs must have shape (batch, features), got {tuple(data[0].shape)}"
        )
    train_data = data if train_data is None else train_data
    # vanishing.device raises a ValueError naming the request when this machine lacks the device
    # (imported here, not at the top, so the package's __init__ may import this module in any
    # order).
    from . import device as pick_device

    dev = torch.device("cpu") if device is None else pick_device(str(device))
    in_features = data[0].shape[1]

    rows: list[dict[str, object]] = []
    for d in depths:
        configs = [(a, i, s) for a in activations for i in inits for s in seeds]
        nets = [
            build_mlp(seed=s, in_features=in_features, out_features=out_features, depth=d,
                      width=width, activation=a, init=i, norm=norm, residual=residual)
            for a, i, s in configs
        ]
        results: list[dict[str, Any]] = [
            {"depth": d, "activation": a, "init": i, "seed": s} for a, i, s in configs
        ]
        if method == "loop":
            _run_loop(nets, results, data, train_data, loss, steps, lr, batch_size, optimizer,
                      eval_every, clip, batch_seed, dev)
        else:
            chunk = max_stack or len(nets)
            for start in range(0, len(nets), chunk):
                stacked = stack_mlps(nets[start:start + chunk])
                if dev.type != "cpu":
                    stacked = stacked.to(dev)
                norms = grad_norms_batched(stacked, *data, loss=loss)
                for j, row in enumerate(results[start:start + chunk]):
                    row["grad_norms"] = norms[j].tolist()
                if steps:
                    gen = torch.Generator().manual_seed(batch_seed)
                    hist = train_batched(stacked, train_data, steps=steps, lr=lr,
                                         batch_size=batch_size, optimizer=optimizer, loss=loss,
                                         eval_every=eval_every, clip=clip, generator=gen)
                    for j, row in enumerate(results[start:start + chunk]):
                        row["step"] = list(hist["step"])
                        for key in ("loss", "acc"):
                            if key in hist:
                                row[key] = hist[key][j].tolist()
                                row["final_" + key] = row[key][-1]
                        row["diverged_at"] = hist["diverged_at"][j]
        rows.extend(results)
    return rows


def _run_loop(nets, results, data, train_data, loss, steps, lr, batch_size, optimizer, eval_every,
              clip, batch_seed, dev) -> None:
    # The plain reference: one network at a time through the shared probes and training loop.
    loss_fn = F.cross_entropy if loss == "cross_entropy" else F.mse_loss
    x, y = (t.to(dev) for t in data)
    xt, yt = (t.to(dev) for t in train_data)
    for net, row in zip(nets, results, strict=True):
        if dev.type != "cpu":
            net.to(dev)
        row["grad_norms"] = list(probes.grad_norms(net, x, y, loss_fn).values())
        if steps:
            gen = torch.Generator().manual_seed(batch_seed)
            try:
                hist = train_mod.train(net, (xt, yt), steps=steps, lr=lr, batch_size=batch_size,
                                       optimizer=optimizer, loss=loss, eval_every=eval_every,
                                       clip=clip, generator=gen)
                row["diverged_at"] = None
            except FloatingPointError as err:
                # train.train stops at the first non-finite loss; keep the step it names.
                found = re.search(r"at step (\d+)", str(err))
                row.update(step=[], loss=[], diverged_at=int(found.group(1)) if found else -1)
                continue
            row["step"] = hist["step"]
            for key in ("loss", "acc"):
                if key in hist:
                    row[key] = hist[key]
                    row["final_" + key] = hist[key][-1]
