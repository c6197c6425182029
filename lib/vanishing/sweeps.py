"""Sweeps over many small networks at once: K MLPs of one shape as one ``nn.Module``.

The book's slowest cells are sweeps - depth x activation x initialization x seed - in which
each configuration is a small network trained or measured on its own. Run one at a time,
such a sweep spends most of its time in Python and per-call overhead, not in arithmetic.
Here the K networks are *stacked*: the weights of layer ``l`` of all K networks become one
parameter of shape ``(K, fan_out, fan_in)``, every layer is one batched matrix product
(:func:`torch.baddbmm`), and autograd does the rest. The networks share no parameter, so the
gradient of the *sum* of their losses with respect to network k's parameters is network k's
own gradient: one backward pass trains all K.

* :func:`stack_mlps` copies K MLPs built by :func:`vanishing.models.mlp` into a
  :class:`StackedMLP` (no initialization logic is repeated here);
* :func:`train_batched` trains them as :func:`vanishing.train.train` trains one network
  (same schedule, batches, clipping and optimizer), :func:`histories` splits its record;
* :func:`train_many` trains a list of networks, each with its own seed, the fastest way that
  gives each its own ``train.train`` updates: MLPs stacked by architecture, the rest alone;
* :func:`grad_norms_batched` gives every network's per-layer ||dL/dW|| at once;
* :func:`build_mlp` builds ``models.mlp`` under its own seed without touching the global RNG.

The results agree with the one-at-a-time loop to float32 rounding (``tests/test_sweeps.py``);
``bench/bench_sweeps.py`` measures the speed-up on the book's own sweeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from . import models
from . import train as train_mod
from .checks import choice, integer, module
from .runtime import progress

__all__ = [
    "OPTIMIZERS",
    "StackedMLP",
    "build_mlp",
    "stack_mlps",
    "grad_norms_batched",
    "train_batched",
    "histories",
    "train_many",
]

#: The optimizers of :func:`vanishing.train.train` that :func:`train_batched` offers: plain SGD and
#: SGD with momentum 0.9 (``torch.optim.SGD``'s updates; elementwise, so stacking does not change
#: them).
OPTIMIZERS = ("sgd", "momentum")
#: Elements of the (K, rows, width) activations an evaluation pass holds at once (8 MiB in float32):
#: enough rows for efficient matrix products, a bounded footprint however large the evaluation set.
EVAL_ELEMENTS = 2**21


def _affine(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """z = h W^T + b for all K networks at once: (K, B, in) -> (K, B, out)."""
    return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))


class _Linear(torch.autograd.Function):
    """One stacked affine layer, z = h W^T + b for all K networks (one ``baddbmm``).

    Its backward spells out the three products autograd would form, in the orientation a
    single network's ``nn.Linear`` uses (dL/dW = g^T h, not the transpose of h^T g): the two
    orientations sum in different orders inside the matrix-product kernel, and this one keeps
    the stacked gradients bit for bit those of the hand-written stacked pass the book's
    stored outputs were computed with.
    """

    @staticmethod
    def forward(
        ctx: Any, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        return _affine(h, weight, bias)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, weight = ctx.saved_tensors
        g_h = torch.bmm(g, weight) if ctx.needs_input_grad[0] else None
        return g_h, torch.bmm(g.transpose(1, 2), h), g.sum(dim=1)


class StackedMLP(nn.Module):
    """K MLPs of one shape with their parameters stacked along a leading axis of size K.

    ``weights[l]`` has shape ``(K, fan_out, fan_in)`` and ``biases[l]`` ``(K, fan_out)`` for
    the ``depth`` hidden layers and then the read-out (input to output, as
    :meth:`vanishing.models.MLP.linears`); ``norm_weights``/``norm_biases`` hold the
    layer-normalization gains and shifts ``(K, width)`` per hidden layer (empty without
    normalization). ``groups`` lists runs ``(start, stop, module)`` of consecutive networks
    that share an activation. Build one with :func:`stack_mlps`.
    """

    def __init__(self, nets: Sequence[models.MLP]) -> None:
        super().__init__()

        def stack(tensors: list[torch.Tensor]) -> nn.Parameter:
            return nn.Parameter(torch.stack([t.detach() for t in tensors]).clone())

        lins = [net.linears() for net in nets]
        norms = [[cast(nn.LayerNorm, b.norm) for b in net.blocks] for net in nets]
        layer_norm = isinstance(nets[0].blocks[0].norm, nn.LayerNorm)
        self.weights = nn.ParameterList([stack([ls[i].weight for ls in lins])
                                         for i in range(len(lins[0]))])
        self.biases = nn.ParameterList([stack([ls[i].bias for ls in lins])
                                        for i in range(len(lins[0]))])
        depth = len(nets[0].blocks)
        self.norm_weights = nn.ParameterList(
            [stack([n[i].weight for n in norms]) for i in range(depth)] if layer_norm else []
        )
        self.norm_biases = nn.ParameterList(
            [stack([n[i].bias for n in norms]) for i in range(depth)] if layer_norm else []
        )
        self.norm_eps = float(norms[0][0].eps) if layer_norm else 0.0
        self.residual = [bool(b.residual) for b in nets[0].blocks]
        acts = [cast(nn.Module, net.blocks[0].act) for net in nets]
        self.groups: list[tuple[int, int, nn.Module]] = []
        for k, act in enumerate(acts):
            if self.groups and repr(self.groups[-1][2]) == repr(act):
                self.groups[-1] = (self.groups[-1][0], k + 1, act)
            else:
                self.groups.append((k, k + 1, act))

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

    def _activate(self, u: torch.Tensor) -> torch.Tensor:
        if len(self.groups) == 1:
            return self.groups[0][2](u)
        # split's backward is one concatenation; slicing would build a zero tensor per group.
        parts = u.split([stop - start for start, stop, _ in self.groups])
        return torch.cat([act(p) for p, (_, _, act) in zip(parts, self.groups, strict=True)])

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Outputs (K, B, out) of all K networks: ``inputs`` (B, in) shared by all, or (K, B, in),
        one batch each."""
        k, fan_in = self.size, self.weights[0].shape[2]
        x = inputs.to(device=self.device, dtype=self.weights[0].dtype)
        if x.dim() == 2 and x.shape[1] == fan_in:
            x = x.expand(k, *x.shape)
        elif not (x.dim() == 3 and x.shape[0] == k and x.shape[2] == fan_in):
            raise ValueError(
                f"inputs must have shape (batch, {fan_in}) or ({k}, batch, {fan_in}), "
                f"got {tuple(x.shape)}"
            )
        # Plain lists: indexing a ParameterList costs a Python call per layer and step.
        weights, biases = list(self.weights), list(self.biases)
        gains, shifts = list(self.norm_weights), list(self.norm_biases)
        # Without a graph to record (evaluation), the layer is the bare product.
        linear = _Linear.apply if torch.is_grad_enabled() else _affine
        for i, residual in enumerate(self.residual):
            z = linear(x, weights[i], biases[i])
            if gains:
                z = torch.addcmul(shifts[i].unsqueeze(1),
                                  F.layer_norm(z, z.shape[-1:], eps=self.norm_eps),
                                  gains[i].unsqueeze(1))
            a = self._activate(z)
            x = x + a if residual else a
        return linear(x, weights[-1], biases[-1])

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
                    if len(self.norm_weights):
                        norm = cast(nn.LayerNorm, block.norm)
                        norm.weight.copy_(self.norm_weights[i][k])
                        norm.bias.copy_(self.norm_biases[i][k])


def _signature(net: models.MLP) -> tuple:
    lins = net.linears()
    return (
        tuple(tuple(lin.weight.shape) for lin in lins),
        tuple(type(b.norm).__name__ for b in net.blocks),
        tuple(b.residual for b in net.blocks),
        lins[0].weight.dtype,
        lins[0].weight.device,
    )


def _unstackable(net: object) -> str | None:
    """Why :func:`stack_mlps` cannot take ``net`` (a phrase after "nets[i]"), or None."""
    if not isinstance(net, models.MLP):
        return f"must be a vanishing.models.MLP, got {type(net).__name__}"
    for block in net.blocks:
        if not isinstance(block.norm, (nn.Identity, nn.LayerNorm)):
            return (f"has norm {type(block.norm).__name__}; "
                    "stack_mlps supports norm=None and 'layer'")
        if isinstance(block.norm, nn.LayerNorm) and (block.norm.weight is None
                                                     or block.norm.bias is None):
            return "has a LayerNorm without gains or shifts; stack_mlps needs both"
    if any(lin.bias is None for lin in net.linears()):
        return "has a Linear layer without bias; stack_mlps needs biases"
    return None


def _trains_alone(net: nn.Module) -> bool:
    """Whether a stack might not reproduce ``train.train`` on ``net``: anything but a
    ``models.MLP`` that :func:`stack_mlps` takes, or anything beyond its parameters that shapes
    its training (a frozen parameter, a parametrization, a hook on a module, a parameter or all
    modules; torch lists hooks only in private dictionaries)."""
    if type(net) is not models.MLP or _unstackable(net) is not None:
        return True
    hooks = torch.nn.modules.module
    return (
        any((hooks._global_forward_hooks, hooks._global_forward_pre_hooks,
             hooks._global_backward_hooks, hooks._global_backward_pre_hooks))
        or any(not p.requires_grad or p._backward_hooks or p._post_accumulate_grad_hooks
               for p in net.parameters())
        or any(parametrize.is_parametrized(m) or m._forward_hooks or m._forward_pre_hooks
               or m._backward_hooks or m._backward_pre_hooks for m in net.modules())
    )


def stack_mlps(nets: Sequence[models.MLP]) -> StackedMLP:
    """Stack K MLPs built by :func:`vanishing.models.mlp` into one :class:`StackedMLP`.

    The networks must share their shape (depth, widths, normalization, residual flags, dtype,
    device); they may differ in anything that lives in the parameters (seed, initialization)
    and in their activation. Supported normalizations: none and ``"layer"`` (batch
    normalization couples the examples of a batch and keeps running statistics; train such
    networks one at a time). The parameters are copied; the networks are left untouched. Put
    networks with the same activation next to each other: each run of equal activations costs
    one extra split and concatenation per layer.
    """
    if isinstance(nets, nn.Module) or not isinstance(nets, Sequence) or len(nets) == 0:
        raise ValueError(f"nets must be a non-empty list of MLPs, got {type(nets).__name__}")
    for i, net in enumerate(nets):
        if (why := _unstackable(net)) is not None:
            raise ValueError(f"nets[{i}] {why}")
    first = _signature(nets[0])
    for i, net in enumerate(nets[1:], start=1):
        if _signature(net) != first:
            raise ValueError(
                f"nets[{i}] differs in shape, normalization, residual flags, dtype or device "
                "from nets[0]; stack only networks of one architecture (group a sweep by depth)"
            )
    return StackedMLP(nets)


def _check_stacked(stacked: object) -> StackedMLP:
    if not isinstance(stacked, StackedMLP):
        raise ValueError(
            f"stacked must be a StackedMLP (see stack_mlps), got {type(stacked).__name__}"
        )
    return stacked


def _check_data(
    inputs: object, targets: object, stacked: StackedMLP, name: str = "data"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a pair (inputs, class targets) and move it to the stack's device."""
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise ValueError(f"{name}: inputs and targets must be tensors")
    fan_in = stacked.weights[0].shape[2]
    if inputs.dim() != 2 or inputs.shape[1] != fan_in:
        raise ValueError(
            f"{name}: inputs must have shape (batch, {fan_in}), got {tuple(inputs.shape)}"
        )
    if len(targets) != len(inputs):
        raise ValueError(f"{name}: {len(inputs)} inputs but {len(targets)} targets")
    if targets.dim() != 1 or targets.dtype != torch.long:
        raise ValueError(f"{name}: cross_entropy needs targets of shape (batch,) and dtype long")
    x = inputs.to(device=stacked.device, dtype=stacked.weights[0].dtype)
    return x, targets.to(stacked.device)


def _losses(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each network's mean cross-entropy (K,) on its batch: what F.cross_entropy gives one
    network (to float rounding)."""
    mask = F.one_hot(y, out.shape[-1]).to(out.dtype)
    return -(out.log_softmax(dim=-1) * mask).sum(dim=-1).mean(dim=1)


@torch.no_grad()
def _evaluate(
    stacked: StackedMLP, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (K,) and accuracy (K,) of every network on all of (x, y), in row chunks of at most
    :data:`EVAL_ELEMENTS` activations."""
    width = max(w.shape[1] for w in stacked.weights)
    rows = max(1, EVAL_ELEMENTS // (stacked.size * width))
    per_example, hits = [], []
    for start in range(0, len(x), rows):
        out, yc = stacked(x[start:start + rows]), y[start:start + rows]
        # logsumexp minus the target's logit: F.cross_entropy's value, deterministic on CUDA.
        target = (out * F.one_hot(yc, out.shape[-1]).to(out.dtype)).sum(dim=-1)
        per_example.append(out.logsumexp(dim=-1) - target)
        hits.append(out.argmax(dim=-1) == yc)
    losses = torch.cat(per_example, dim=1).mean(dim=1)
    return losses, torch.cat(hits, dim=1).float().mean(dim=1)


def _layer_norms(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    # Per network and weight matrix, (K, layers): probes.safe_norm's float64 sum of squares, one
    # row per network (squares of float32 entries below about 1e-20 would underflow to zero).
    return torch.stack([g.detach().double().flatten(1).norm(dim=1) for g in grads], dim=1)


def grad_norms_batched(
    stacked: StackedMLP, inputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Norm of d(cross-entropy)/dW for every weight matrix of every stacked network, with
    class-index ``targets``: shape (K, depth + 1), float64, on the CPU.

    Row ``k`` is what ``probes.grad_norms(net_k, inputs, targets, F.cross_entropy)`` returns
    for network ``k`` on the same batch (input layer first, read-out last). The stacked
    parameters and their ``.grad`` are not changed.
    """
    stacked = _check_stacked(stacked)
    x, y = _check_data(inputs, targets, stacked, name="inputs/targets")
    total = _losses(stacked(x), y).sum()
    return _layer_norms(torch.autograd.grad(total, list(stacked.weights))).cpu()


def train_batched(
    stacked: StackedMLP,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    steps: int,
    lr: float,
    batch_size: int | None = 64,
    optimizer: str = "sgd",
    test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    eval_every: int = 10,
    clip: float | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    record_grad_norms: bool = False,
) -> dict[str, Any]:
    """Train all K stacked networks at once, in place, the way :func:`vanishing.train.train`
    trains one.

    Same arguments and schedule as ``train.train``: ``steps`` updates of ``optimizer``
    (``"sgd"`` or ``"momentum"``) with learning rate ``lr``; minibatches of ``batch_size``
    drawn with ``generator`` (``None``: torch's global generator; ``batch_size=None``: full
    batch); ``clip`` rescales each network's whole gradient to at most that norm (as
    ``clip_grad_norm_`` on that network alone); every ``eval_every`` steps (and at step 1) the
    cross-entropy loss and the accuracy on all of ``data`` (and ``test_data``) are
    recorded, and with ``record_grad_norms`` the norm of each weight matrix's gradient on
    that step's batch (before clipping, as ``train.train`` records it). With one generator
    all K networks see the *same* minibatches; with a list of K generators network k draws
    its own, exactly as ``train.train(..., generator=generator[k])`` would.

    Returns ``step`` (list of ints), ``loss``/``acc``/``test_loss``/``test_acc`` (tensors of
    shape (K, evaluations), on the CPU), ``grad_norms`` when recorded (float64,
    (K, evaluations, depth + 1), input layer first) and ``diverged_at`` (per network, the
    first step whose training loss was not finite, else ``None``). Where ``train.train``
    raises :class:`vanishing.train.Diverged`, the batched form keeps training the other
    networks (they share nothing); the diverged one's values become nan or inf.
    """
    stacked = _check_stacked(stacked)
    k = stacked.size
    gens = generator if isinstance(generator, Sequence) and not isinstance(generator, str) else None
    if gens is not None:
        if len(gens) != k or not all(isinstance(g, torch.Generator) for g in gens):
            raise ValueError(f"generator: a list must hold one torch.Generator per network ({k}), "
                             f"got {generator!r}")
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, a list of {k} of them, or None, "
                         f"got {type(generator).__name__}")
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError("data must be a pair (inputs, targets)")
    x_all, y_all = _check_data(data[0], data[1], stacked)
    train_mod._check_schedule(steps=steps, eval_every=eval_every, lr=lr, optimizer=optimizer,
                              allowed=OPTIMIZERS, clip=clip, batch_size=batch_size, n=len(x_all))
    sets = [("", x_all, y_all)]
    if test_data is not None:
        if not (isinstance(test_data, (tuple, list)) and len(test_data) == 2):
            raise ValueError("test_data must be a pair (inputs, targets) or None")
        sets.append(("test_", *_check_data(*test_data, stacked, name="test_data")))

    params: list[torch.Tensor] = list(stacked.parameters())
    weights = list(stacked.weights)
    buffers: list[torch.Tensor] = []  # momentum buffers, as torch.optim.SGD(momentum=0.9) keeps
    shared = generator if isinstance(generator, torch.Generator) else None
    columns: dict[str, list[torch.Tensor]] = {}
    steps_seen: list[int] = []
    norms: list[torch.Tensor] = []
    diverged_at: list[int | None] = [None] * k

    for step in progress(range(1, steps + 1), desc=f"training {k} networks"):
        if gens is None or batch_size is None:
            x, y = train_mod.draw_batch(x_all, y_all, batch_size, shared)
        else:
            batches = [train_mod.draw_batch(x_all, y_all, batch_size, g) for g in gens]
            x, y = torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])
        for p in params:
            p.grad = None
        per_net = _losses(stacked(x), y)
        per_net.sum().backward()
        grads = [cast(torch.Tensor, p.grad) for p in params]
        evaluating = step % eval_every == 0 or step == 1
        if record_grad_norms and evaluating:
            norms.append(_layer_norms([cast(torch.Tensor, w.grad) for w in weights]))
        finite = torch.isfinite(per_net.detach())
        if not bool(finite.all()):
            for j in torch.nonzero(~finite).flatten().tolist():
                if diverged_at[j] is None:
                    diverged_at[j] = step
        if clip is not None:
            with torch.no_grad():
                # clip_grad_norm_ per network: the norm of all its parameters' gradients together.
                total = torch.linalg.vector_norm(torch.stack(
                    [torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads], dim=1), dim=1)
                coef = (clip / (total + 1e-6)).clamp(max=1.0)
                torch._foreach_mul_(grads, [coef.view(-1, *([1] * (g.dim() - 1))) for g in grads])
        with torch.no_grad():
            # torch.optim.SGD(foreach=True)'s update, kernel for kernel (so bit for bit), without
            # its per-step Python bookkeeping over the 2 (depth + 1) parameters: profiled on 08's
            # deepest stack (width 32), that bookkeeping was about a tenth of a training step.
            if optimizer == "sgd":
                torch._foreach_add_(params, grads, alpha=-lr)
            else:
                if buffers:
                    torch._foreach_mul_(buffers, 0.9)
                    torch._foreach_add_(buffers, grads)
                else:  # the buffer starts as the first gradient
                    buffers = [g.detach().clone() for g in grads]
                torch._foreach_add_(params, buffers, alpha=-lr)
        if evaluating:
            steps_seen.append(step)
            for prefix, xs, ys in sets:
                losses, hits = _evaluate(stacked, xs, ys)
                columns.setdefault(prefix + "loss", []).append(losses)
                columns.setdefault(prefix + "acc", []).append(hits)
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
    ``test_acc`` (those recorded); ``grad_norms`` becomes a list with one list of per-layer
    norms per evaluation (input layer first); ``diverged_at`` is kept.
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


def train_many(
    nets: Sequence[nn.Module],
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    seeds: Sequence[int],
    steps: int,
    lr: float,
    batch_size: int | None = 64,
    optimizer: str = "sgd",
    test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    eval_every: int = 10,
    clip: float | None = None,
) -> list[dict[str, object]]:
    """Train every network of ``nets`` in place, each with its own seed: network ``i`` as
    ``train.train(nets[i], data, generator=torch.Generator().manual_seed(seeds[i]), ...)``
    would (cross-entropy; the other arguments are ``train.train``'s, ``optimizer`` one of
    :data:`OPTIMIZERS`).

    06, 07 and 13 run their seed sweeps through here. MLPs of one architecture train together,
    one stack per architecture (:func:`stack_mlps`; networks keep the order given, so put equal
    activations side by side), and get ``train.train``'s updates to float32 rounding; their
    trained parameters are written back. A network a stack might not reproduce trains alone
    with ``train.train`` itself: batch normalization (its batch statistics couple the
    examples), a frozen parameter, a parametrization, a hook, a subclass of ``models.MLP`` or
    any other ``nn.Module``. Every argument is checked before any network trains (for modules
    that are not ``models.MLP``, only what ``train.train`` checks as it starts them); networks
    may not share parameters, and an MLP's inputs must have its dtype and device.

    Returns one history per network, in the order given, as :func:`histories` gives them,
    with ``diverged_at``: the first step whose minibatch loss was not finite, else ``None``.
    Read divergence from ``diverged_at``: a stacked network that diverges goes on with the
    others, its parameters and its record to the last step becoming nan or inf, while one
    trained alone stops there with the parameters of the step before, its record ending with
    the evaluation before.
    """
    if isinstance(nets, nn.Module) or not isinstance(nets, Sequence):
        raise ValueError(f"nets must be a list of networks, got {type(nets).__name__}")
    for name, pair in (("data", data), ("test_data", test_data)):
        if not (pair is None and name == "test_data") and not (
            isinstance(pair, (tuple, list)) and len(pair) == 2
            and all(isinstance(t, torch.Tensor) for t in pair)
        ):
            raise ValueError(f"{name} must be a pair (inputs, targets) of tensors")
    owner: dict[int, int] = {}  # parameter -> the first network that holds it
    for i, net in enumerate(nets):
        module(net, f"nets[{i}]")
        for p in net.parameters():
            if owner.setdefault(id(p), i) != i:
                raise ValueError(f"nets[{i}] shares parameters with nets[{owner[id(p)]}]; "
                                 "build one network per entry")
        if not isinstance(net, models.MLP):
            continue
        weight = net.linears()[0].weight
        for name, pair in (("data", data), ("test_data", test_data)):
            if pair is None:
                continue
            if pair[0].shape[-1] != weight.shape[1]:
                raise ValueError(f"nets[{i}] takes {weight.shape[1]} input features, {name} has "
                                 f"{pair[0].shape[-1]}")
            if (pair[0].dtype, pair[0].device) != (weight.dtype, weight.device):
                raise ValueError(f"nets[{i}] is {weight.dtype} on {weight.device}, {name}'s inputs "
                                 f"{pair[0].dtype} on {pair[0].device}; move one to the other")
    if isinstance(seeds, str) or not isinstance(seeds, Sequence) or len(seeds) != len(nets):
        raise ValueError(f"seeds must be a list or range of one int per network ({len(nets)}), "
                         f"got {seeds!r}")
    for i, seed in enumerate(seeds):
        integer(f"seeds[{i}]", seed, 0)
    choice("optimizer", optimizer, OPTIMIZERS)
    schedule: dict[str, Any] = dict(steps=steps, lr=lr, batch_size=batch_size, optimizer=optimizer,
                                    test_data=test_data, eval_every=eval_every, clip=clip)
    out: list[dict[str, object]] = [{} for _ in nets]
    alone = [i for i, net in enumerate(nets) if _trains_alone(net)]
    stacks: dict[tuple, list[int]] = {}
    for i, net in enumerate(nets):
        if i not in alone:
            stacks.setdefault(_signature(cast(models.MLP, net)), []).append(i)
    for members in stacks.values():
        group = [cast(models.MLP, nets[i]) for i in members]
        stacked = stack_mlps(group)
        record = train_batched(stacked, data, **schedule,
                               generator=[torch.Generator().manual_seed(seeds[i]) for i in members])
        stacked.copy_to(group)
        for i, one in zip(members, histories(record), strict=True):
            out[i] = one
    for i in alone:
        generator = torch.Generator().manual_seed(seeds[i])
        try:
            history = train_mod.train(nets[i], data, generator=generator, **schedule)
            out[i] = {**history, "diverged_at": None}
        except train_mod.Diverged as err:
            out[i] = {**err.history, "diverged_at": err.step}
    return out


def build_mlp(*, seed: int, **kwargs: Any) -> models.MLP:
    """``models.mlp(**kwargs)`` built right after ``torch.manual_seed(seed)`` (as
    ``vg.seed(seed)`` would).

    The global random state is saved and restored, so building a sweep's networks does not
    shift the random numbers of whatever runs next. The network is built on the CPU; move it
    with ``.to(device)``.
    """
    integer("seed", seed, 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return models.mlp(**kwargs)
