"""Restricted Boltzmann machines, contrastive divergence and deep belief nets, written out plainly.

A binary RBM has energy ``E(v, h) = -b·v - c·h - h·W v``; both conditionals
factorize into logistic units, which makes block Gibbs sampling cheap.
:func:`train_rbm` fits one by CD-k (Hinton 2002), :class:`DBN` stacks RBMs
greedily, each trained on the hidden probabilities of the one below (Hinton,
Osindero & Teh 2006), and :meth:`DBN.sample` runs the "ancestral pass": Gibbs
sampling in the top RBM, then one directed sweep down to the pixels.

For machines with at most :data:`MAX_ENUMERATE` units on one side,
:func:`log_partition` sums the partition function exactly, so the
log-likelihood and the DBN's variational bound can be computed, not estimated.
Everything here is explicit tensor algebra (no autograd), so it reads like the papers.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from .checks import integer, number

__all__ = [
    "MAX_ENUMERATE",
    "RBM",
    "DBN",
    "train_rbm",
    "train_dbn",
    "log_partition",
    "log_likelihood",
    "dbn_bound",
    "dbn_log_likelihood",
    "init_from_dbn",
]

#: The largest number of units on one side that :func:`log_partition` enumerates (2**20 states).
MAX_ENUMERATE = 20


def _bernoulli(p: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Binary samples with probabilities ``p``; works with a CPU generator for tensors on any
    device."""
    if generator is None or generator.device == p.device:
        return torch.bernoulli(p, generator=generator)
    return (
        torch.rand(p.shape, generator=generator, device=generator.device).to(p.device) < p
    ).to(p.dtype)


class RBM(nn.Module):
    """A binary-binary restricted Boltzmann machine with ``visible`` and ``hidden`` units.

    Weights start small (normal with standard deviation ``init_std``, Hinton's
    practical guide uses 0.01) and biases at zero. The parameters are plain
    tensors updated by :func:`train_rbm`; they carry no gradients.
    """

    def __init__(self, visible: int, hidden: int, *, init_std: float = 0.01,
                 generator: torch.Generator | None = None):
        super().__init__()
        integer("visible", visible)
        integer("hidden", hidden)
        number("init_std", init_std, low_ok=True, allowed="a non-negative number")
        self.W = nn.Parameter(
            torch.randn(hidden, visible, generator=generator) * init_std, requires_grad=False
        )
        self.b_v = nn.Parameter(torch.zeros(visible), requires_grad=False)
        self.b_h = nn.Parameter(torch.zeros(hidden), requires_grad=False)

    @property
    def visible(self) -> int:
        return self.W.shape[1]

    @property
    def hidden(self) -> int:
        return self.W.shape[0]

    def _check(self, x: torch.Tensor, n: int, what: str) -> None:
        if x.dim() != 2 or x.shape[1] != n:
            raise ValueError(f"{what} must have shape (batch, {n}), got {tuple(x.shape)}")

    def hidden_probs(self, v: torch.Tensor) -> torch.Tensor:
        """p(h_j = 1 | v) = sigmoid(c_j + W_j · v) for every hidden unit."""
        self._check(v, self.visible, "v")
        return torch.sigmoid(v @ self.W.T + self.b_h)

    def visible_probs(self, h: torch.Tensor) -> torch.Tensor:
        """p(v_i = 1 | h) = sigmoid(b_i + W_:i · h) for every visible unit."""
        self._check(h, self.hidden, "h")
        return torch.sigmoid(h @ self.W + self.b_v)

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) = -b·v - sum_j softplus(c_j + W_j·v), so that p(v) = exp(-F(v)) / Z. One value
        per row."""
        self._check(v, self.visible, "v")
        return -(v @ self.b_v) - nn.functional.softplus(v @ self.W.T + self.b_h).sum(dim=1)

    def gibbs(
        self, v: torch.Tensor, steps: int, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Run ``steps`` sweeps of block Gibbs sampling v -> h -> v; returns binary visible
        samples."""
        integer("steps", steps)
        for _ in range(steps):
            h = _bernoulli(self.hidden_probs(v), generator)
            v = _bernoulli(self.visible_probs(h), generator)
        return v

    def reconstruct(self, v: torch.Tensor) -> torch.Tensor:
        """Mean-field reconstruction v -> p(h|v) -> p(v|h), the quantity behind reconstruction
        error."""
        return self.visible_probs(self.hidden_probs(v))


def train_rbm(
    rbm: RBM,
    data: torch.Tensor,
    *,
    epochs: int,
    lr: float = 0.05,
    k: int = 1,
    batch_size: int = 32,
    momentum: float = 0.5,
    weight_decay: float = 1e-4,
    generator: torch.Generator | None = None,
) -> dict[str, list[float]]:
    """Fit ``rbm`` to ``data`` (rows in [0, 1]) by contrastive divergence CD-``k``.

    The positive statistics use the data and p(h|v); the negative ones come from
    ``k`` Gibbs sweeps started at the data (Hinton 2002). The last sweep uses
    probabilities instead of samples, which lowers the variance of the update.
    Returns per-epoch ``recon_error`` (mean squared error of the mean-field
    reconstruction) and ``free_energy`` (mean F(v) over the data).
    """
    if not isinstance(rbm, RBM):
        raise ValueError(f"rbm must be an RBM, got {type(rbm).__name__}")
    rbm._check(data, rbm.visible, "data")
    if float(data.min()) < 0 or float(data.max()) > 1:
        raise ValueError("data must lie in [0, 1] (probabilities or binary pixels)")
    integer("epochs", epochs)
    number("lr", lr)
    integer("k", k)
    integer("batch_size", batch_size)
    number("momentum", momentum, high=1.0, low_ok=True, high_ok=False,
           allowed="a number in [0, 1)")
    number("weight_decay", weight_decay, low_ok=True, allowed="a non-negative number")
    n = data.shape[0]
    vel = [torch.zeros_like(p) for p in (rbm.W, rbm.b_v, rbm.b_h)]
    history: dict[str, list[float]] = {"epoch": [], "recon_error": [], "free_energy": []}
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=generator).to(data.device)
        for start in range(0, n, batch_size):
            v0 = data[order[start:start + batch_size]]
            ph0 = rbm.hidden_probs(v0)
            h = _bernoulli(ph0, generator)
            for step in range(k):
                pv = rbm.visible_probs(h)
                v = pv if step == k - 1 else _bernoulli(pv, generator)
                phk = rbm.hidden_probs(v)
                h = _bernoulli(phk, generator)
            m = v0.shape[0]
            grads = (
                (ph0.T @ v0 - phk.T @ v) / m - weight_decay * rbm.W,
                (v0 - v).mean(dim=0),
                (ph0 - phk).mean(dim=0),
            )
            for p, g, u in zip((rbm.W, rbm.b_v, rbm.b_h), grads, vel, strict=True):
                u.mul_(momentum).add_(lr * g)
                p.data.add_(u)
        history["epoch"].append(epoch)
        history["recon_error"].append(float(((rbm.reconstruct(data) - data) ** 2).mean()))
        history["free_energy"].append(float(rbm.free_energy(data).mean()))
    return history


def _all_states(n: int, device: torch.device) -> torch.Tensor:
    return torch.tensor(list(itertools.product((0.0, 1.0), repeat=n)), device=device)


def log_partition(rbm: RBM) -> float:
    """log Z of ``rbm``, summed exactly over the smaller layer (at most :data:`MAX_ENUMERATE`
    units).

    Summing out the other layer analytically leaves 2**min(visible, hidden)
    terms, each computed in log space so nothing overflows.
    """
    if not isinstance(rbm, RBM):
        raise ValueError(f"rbm must be an RBM, got {type(rbm).__name__}")
    small = min(rbm.visible, rbm.hidden)
    if small > MAX_ENUMERATE:
        raise ValueError(
            f"log_partition enumerates 2**{small} states; "
            f"allowed: at most {MAX_ENUMERATE} units on the smaller side"
        )
    with torch.no_grad():
        w, bv, bh = rbm.W.double(), rbm.b_v.double(), rbm.b_h.double()
        if rbm.visible <= rbm.hidden:
            v = _all_states(rbm.visible, w.device).double()
            terms = v @ bv + nn.functional.softplus(v @ w.T + bh).sum(dim=1)
        else:
            h = _all_states(rbm.hidden, w.device).double()
            terms = h @ bh + nn.functional.softplus(h @ w + bv).sum(dim=1)
        return float(torch.logsumexp(terms, dim=0))


def log_likelihood(rbm: RBM, v: torch.Tensor) -> torch.Tensor:
    """Exact log p(v) = -F(v) - log Z for each row of ``v`` (Z from :func:`log_partition`)."""
    return -rbm.free_energy(v).double() - log_partition(rbm)


class DBN(nn.Module):
    """A deep belief net: a stack of RBMs, the visible layer of each the hidden layer of the one
    below.

    The top two layers form an undirected RBM; the connections below it are
    directed and generative, with the weights each RBM learned.
    """

    def __init__(self, rbms: list[RBM]):
        super().__init__()
        if not rbms or not all(isinstance(r, RBM) for r in rbms):
            raise ValueError("rbms must be a non-empty list of RBM")
        for lower, upper in zip(rbms, rbms[1:], strict=False):
            if upper.visible != lower.hidden:
                raise ValueError(
                    f"layer sizes do not chain: {lower.hidden} hidden units "
                    f"feed {upper.visible} visible"
                )
        self.rbms = nn.ModuleList(rbms)

    def up(self, v: torch.Tensor, layers: int | None = None) -> torch.Tensor:
        """Propagate probabilities p(h|v) upward through the first ``layers`` RBMs (all by
        default)."""
        layers = len(self.rbms) if layers is None else layers
        integer("layers", layers, 0, len(self.rbms))
        for r in cast("Sequence[RBM]", self.rbms[:layers]):
            v = r.hidden_probs(v)
        return v

    def down(self, h: torch.Tensor) -> torch.Tensor:
        """From states of the top RBM's visible layer, sweep the directed weights down to pixel
        probabilities."""
        for r in reversed(cast("Sequence[RBM]", self.rbms[:-1])):
            h = r.visible_probs(h)
        return h

    def reconstruct(self, v: torch.Tensor) -> torch.Tensor:
        """Up to the top hidden layer and back down, all in probabilities (mean field)."""
        top = cast(RBM, self.rbms[-1])
        return self.down(top.visible_probs(top.hidden_probs(self.up(v, len(self.rbms) - 1))))

    def sample(self, n: int, *, gibbs_steps: int = 200,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """The ancestral pass: ``gibbs_steps`` of Gibbs sampling in the top RBM, then one sweep
        down.

        The ``n`` chains start from fair coin flips. Returns pixel probabilities.
        """
        integer("n", n)
        integer("gibbs_steps", gibbs_steps)
        top = cast(RBM, self.rbms[-1])
        start = _bernoulli(torch.full((n, top.visible), 0.5, device=top.W.device), generator)
        v = top.gibbs(start, gibbs_steps, generator=generator)
        return self.down(v)


def train_dbn(
    data: torch.Tensor,
    sizes: list[int],
    *,
    epochs: int,
    generator: torch.Generator | None = None,
    **kwargs,
) -> tuple[DBN, list[dict[str, list[float]]]]:
    """Greedy layer-wise training: fit an RBM per entry of ``sizes`` on the layer below's p(h|v).

    ``kwargs`` go to :func:`train_rbm`. Returns the DBN and one history per layer.
    """
    if not sizes:
        raise ValueError("sizes must be a non-empty list of positive ints, got an empty one")
    for size in sizes:
        integer("sizes: each entry", size)
    rbms, histories, x = [], [], data
    for size in sizes:
        r = RBM(x.shape[1], size, generator=generator).to(data.device)
        histories.append(train_rbm(r, x, epochs=epochs, generator=generator, **kwargs))
        rbms.append(r)
        x = r.hidden_probs(x)
    return DBN(rbms), histories


def _two_layer(dbn: DBN) -> tuple[RBM, RBM]:
    if not isinstance(dbn, DBN) or len(dbn.rbms) != 2:
        raise ValueError("dbn must be a DBN of exactly two RBMs")
    return cast(RBM, dbn.rbms[0]), cast(RBM, dbn.rbms[1])


def _log_p_h1(r1: RBM, r2: RBM) -> tuple[torch.Tensor, torch.Tensor]:
    # Every state of the middle layer and its log-probability under the top RBM.
    if r1.hidden > MAX_ENUMERATE:
        raise ValueError(
            f"the middle layer has {r1.hidden} units; allowed: at most {MAX_ENUMERATE}"
        )
    h = _all_states(r1.hidden, r1.W.device)
    return h, log_likelihood(r2, h)


def dbn_log_likelihood(dbn: DBN, v: torch.Tensor) -> torch.Tensor:
    """Exact log p(v) = log sum_h p(h) p(v|h) of a two-layer DBN, summing over every
    middle-layer state."""
    r1, r2 = _two_layer(dbn)
    h, log_ph = _log_p_h1(r1, r2)
    logits = (h @ r1.W + r1.b_v).double()  # (states, visible)
    vv = v.double()
    log_pv_h = (
        vv @ nn.functional.logsigmoid(logits).T + (1 - vv) @ nn.functional.logsigmoid(-logits).T
    )
    return torch.logsumexp(log_pv_h + log_ph, dim=1)


def dbn_bound(dbn: DBN, v: torch.Tensor) -> torch.Tensor:
    """The variational lower bound of Hinton et al. (2006, eq. 11) on log p(v), with q(h|v) the
    first RBM's posterior.

    bound = sum_h q(h|v) [log p(h) + log p(v|h)] + H(q), computed exactly over all middle-layer
    states.
    """
    r1, r2 = _two_layer(dbn)
    h, log_ph = _log_p_h1(r1, r2)
    hd = h.double()
    q = r1.hidden_probs(v).double().clamp(1e-12, 1 - 1e-12)
    log_q = hd @ torch.log(q).T + (1 - hd) @ torch.log1p(-q).T  # (states, batch)
    logits = (h @ r1.W + r1.b_v).double()
    vv = v.double()
    log_pv_h = (
        vv @ nn.functional.logsigmoid(logits).T + (1 - vv) @ nn.functional.logsigmoid(-logits).T
    )
    weights = torch.exp(log_q)
    entropy = -(q * torch.log(q) + (1 - q) * torch.log1p(-q)).sum(dim=1)
    return (weights * (log_ph[:, None] + log_pv_h.T)).sum(dim=0) + entropy


def init_from_dbn(model: nn.Module, dbn: DBN) -> None:
    """Copy a DBN's recognition weights into the first hidden blocks of a
    :func:`vanishing.models.mlp`.

    Block i gets the weights W and hidden biases of RBM i, so the network's
    forward pass computes the DBN's upward probabilities; the remaining blocks
    and the read-out keep their initialization. This is the "pretrain, then
    fine-tune by backpropagation" starting point of Hinton and Salakhutdinov
    (2006) and Bengio et al. (2007); Hinton, Osindero and Teh (2006), who
    introduced the DBN, fine-tuned it instead as a generative model with a
    contrastive version of the wake-sleep algorithm.
    """
    if not isinstance(dbn, DBN):
        raise ValueError(f"dbn must be a DBN, got {type(dbn).__name__}")
    blocks = getattr(model, "blocks", None)
    if blocks is None or len(blocks) < len(dbn.rbms):
        raise ValueError(
            "model must be a vanishing.models.mlp with at least as many blocks as the DBN has RBMs"
        )
    with torch.no_grad():
        for block, r in zip(blocks, cast("Sequence[RBM]", dbn.rbms), strict=False):
            if block.linear.weight.shape != r.W.shape:
                raise ValueError(
                    f"block weight shape {tuple(block.linear.weight.shape)} "
                    f"does not match RBM {tuple(r.W.shape)}"
                )
            block.linear.weight.copy_(r.W)
            block.linear.bias.copy_(r.b_h)

