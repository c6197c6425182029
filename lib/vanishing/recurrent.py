"""Sequence models: a vanilla RNN, an LSTM and a GRU behind one builder.

Each reads a batch of sequences of shape (batch, time, features) and predicts
from its last hidden state, which is what the long-time-lag tasks of
:mod:`vanishing.data` need.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from .checks import choice, integer, number
from .train import _check_schedule

__all__ = [
    "SequenceModel", "rnn", "lstm_step", "lstm_trace", "cell_contributions",
    "input_grad_by_lag", "side_by_side_logits", "train_side_by_side",
]

_CELLS = ("rnn", "lstm", "gru")


class SequenceModel(nn.Module):
    """A recurrent core (``self.core``) followed by a linear read-out of the last hidden state."""

    def __init__(self, core: nn.RNNBase, head: nn.Linear):
        super().__init__()
        self.core = core
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[2] != self.core.input_size:
            raise ValueError(
                f"input must have shape (batch, time, {self.core.input_size}), got {tuple(x.shape)}"
            )
        states, _ = self.core(x)
        return self.head(states[:, -1])


def rnn(
    *,
    cell: str = "rnn",
    input_size: int,
    hidden_size: int,
    output_size: int,
    nonlinearity: str = "tanh",
    forget_bias: float | None = None,
) -> SequenceModel:
    """Build a one-layer sequence model with ``cell`` in ``("rnn", "lstm", "gru")``.

    ``nonlinearity`` (``"tanh"`` or ``"relu"``) applies to the vanilla RNN only.
    ``forget_bias`` sets the LSTM's forget-gate bias (Gers et al. 2000 advise a
    positive value, so the cell starts out remembering); ``None`` keeps torch's
    default, which draws both bias vectors uniformly from +-1/sqrt(hidden_size):
    a random forget bias centred on zero.
    """
    choice("cell", cell, _CELLS)
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("output_size", output_size)):
        integer(name, value)
    choice("nonlinearity", nonlinearity, ("tanh", "relu"))
    if forget_bias is not None and cell != "lstm":
        raise ValueError(f"forget_bias applies to cell='lstm' only, got cell={cell!r}")
    if cell == "rnn":
        core: nn.RNNBase = nn.RNN(
            input_size, hidden_size, nonlinearity=nonlinearity, batch_first=True
        )
    elif cell == "lstm":
        core = nn.LSTM(input_size, hidden_size, batch_first=True)
        if forget_bias is not None:
            with torch.no_grad():
                for name, p in core.named_parameters():
                    if name.startswith("bias_ih"):
                        # PyTorch orders the gates input, forget, cell, output; the two bias
                        # vectors add, so put the whole forget bias in one of them.
                        p[hidden_size:2 * hidden_size] = forget_bias
                    elif name.startswith("bias_hh"):
                        p[hidden_size:2 * hidden_size] = 0.0
    else:
        core = nn.GRU(input_size, hidden_size, batch_first=True)
    return SequenceModel(core, nn.Linear(hidden_size, output_size))


# --- Looking inside an LSTM: the cell state and its gates, step by step. ---

def lstm_step(
    core: nn.LSTM, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """One step of a one-layer ``nn.LSTM`` written out by hand, with the weights of ``core``.

    Returns ``(h_t, c_t, gates)`` with ``gates`` holding the input, forget,
    candidate and output activations ``i, f, g, o``. The cell update is
    ``c_t = f * c_{t-1} + i * g`` and ``h_t = o * tanh(c_t)``, so the
    Jacobian of ``c_t`` with respect to ``c_{t-1}`` can be taken with autograd
    through this function - ``nn.LSTM`` hides ``c_t`` for every step but the last.
    """
    if (
        not isinstance(core, nn.LSTM) or core.num_layers != 1 or core.bidirectional
        or core.proj_size
    ):
        raise ValueError("core must be a one-layer, unidirectional nn.LSTM without projection")
    # nn.LSTM sets its weights with setattr; the stubs type them Tensor | Module.
    w_ih, w_hh = cast(torch.Tensor, core.weight_ih_l0), cast(torch.Tensor, core.weight_hh_l0)
    b_ih, b_hh = cast(torch.Tensor, core.bias_ih_l0), cast(torch.Tensor, core.bias_hh_l0)
    z = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    i, f, g, o = z.chunk(4, dim=-1)  # PyTorch's gate order
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c + i * g
    h = o * torch.tanh(c)
    return h, c, {"i": i, "f": f, "g": g, "o": o}


def lstm_trace(model: SequenceModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run a one-layer LSTM ``model`` over ``x`` step by step and return every internal state.

    The result maps ``"h"``, ``"c"``, ``"i"``, ``"f"``, ``"g"``, ``"o"`` to
    tensors of shape (batch, time, hidden), computed with :func:`lstm_step`
    from zero initial states exactly as ``nn.LSTM`` computes them.
    """
    if not isinstance(model, SequenceModel) or not isinstance(model.core, nn.LSTM):
        raise ValueError("model must be a SequenceModel built with cell='lstm'")
    if x.dim() != 3 or x.shape[2] != model.core.input_size:
        raise ValueError(
            f"x must have shape (batch, time, {model.core.input_size}), got {tuple(x.shape)}"
        )
    core = model.core
    h = x.new_zeros(x.shape[0], core.hidden_size)
    c = x.new_zeros(x.shape[0], core.hidden_size)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("h", "c", "i", "f", "g", "o")}
    for t in range(x.shape[1]):
        h, c, gates = lstm_step(core, x[:, t], h, c)
        out["h"].append(h)
        out["c"].append(c)
        for k, v in gates.items():
            out[k].append(v)
    return {k: torch.stack(v, dim=1) for k, v in out.items()}


def cell_contributions(trace: dict[str, torch.Tensor]) -> torch.Tensor:
    """What each step wrote into an LSTM's last cell state, as it arrives there.

    From a :func:`lstm_trace` (zero initial cell), the cell state unrolls into a sum,
    ``c_T = sum_t i_t g_t prod_{s>t} f_s``: step ``t`` writes ``i_t g_t``, and every
    later forget gate scales it. Returns these terms, shape (batch, time, hidden);
    they sum over time to ``trace["c"][:, -1]``. Splitting them into the step that
    holds the signal and the rest (the distractors) shows how loud each step's own
    write is in the cell at the end; it does not count what a step changes through
    later gates and writes (via ``h``), so it is not a measure of what the cell knows.
    """
    if not isinstance(trace, dict) or not {"i", "f", "g"} <= set(trace):
        raise ValueError("trace must be the dict lstm_trace returns (with keys 'i', 'f', 'g')")
    f = trace["f"]
    # prod_{s>t} f_s: the reversed cumulative product of the later forget gates
    later = torch.cat([f[:, 1:].flip(1).cumprod(1).flip(1), torch.ones_like(f[:, :1])], dim=1)
    return trace["i"] * trace["g"] * later


def input_grad_by_lag(
    model: SequenceModel, x: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Mean over the batch of ||dL/dx_t|| for every step t, as a tensor indexed by lag T - t.

    Entry ``k`` is the gradient norm at the input ``k`` steps before the last
    one (``k = 0`` is the last input). The loss, the cross-entropy of the output with
    ``targets``, is read from the last step, so
    this is how much the error signal has shrunk after travelling back ``k``
    steps in time.
    """
    if not isinstance(model, SequenceModel):
        raise ValueError(f"model must be a SequenceModel, got {type(model).__name__}")
    x = x.detach().clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x), targets)
    (g,) = torch.autograd.grad(loss, x)
    return g.norm(dim=2).mean(dim=0).flip(0).detach()


# --- Many small recurrent models trained side by side, as one batched computation. ---

def side_by_side_logits(
    params: dict[str, torch.Tensor], x: torch.Tensor, cell: str, nonlinearity: str = "tanh"
) -> torch.Tensor:
    """Logits of K stacked one-layer sequence models on ``x`` of shape (K, batch, time, features).

    ``params[name]`` stacks the K models' parameters along a new first axis (names as in
    ``named_parameters()``). Each slice follows PyTorch's equations for ``nn.RNN``, ``nn.LSTM``
    or ``nn.GRU``, so that model k computes what its own module computes; batching the K models
    into one matrix product per step is what makes a sweep over seeds fast on a CPU.
    """
    choice("cell", cell, _CELLS)
    choice("nonlinearity", nonlinearity, ("tanh", "relu"))
    if x.dim() != 4:
        raise ValueError(f"x must have shape (models, batch, time, features), got {tuple(x.shape)}")
    act = torch.relu if nonlinearity == "relu" else torch.tanh
    w_ih = params["core.weight_ih_l0"].transpose(1, 2)
    w_hh = params["core.weight_hh_l0"].transpose(1, 2)
    h = x.new_zeros(x.shape[0], x.shape[1], w_hh.shape[1])
    both = params["core.bias_ih_l0"] + params["core.bias_hh_l0"]  # RNN and LSTM add the two biases
    if cell == "rnn":
        pre = x @ w_ih[:, None] + both[:, None, None]
        for z in pre.unbind(2):  # h_t = act(W h_{t-1} + U x_t + b), every model at once
            h = act(torch.baddbmm(z, h, w_hh))
    elif cell == "lstm":
        pre = x @ w_ih[:, None] + both[:, None, None]
        c = h
        for z in pre.unbind(2):
            i, f, g, o = torch.baddbmm(z, h, w_hh).chunk(4, dim=-1)  # PyTorch's gate order
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
    else:  # GRU, PyTorch's convention: h_t = (1 - z_t) n_t + z_t h_{t-1}
        pre = x @ w_ih[:, None] + params["core.bias_ih_l0"][:, None, None]
        H = h.shape[-1]
        for z in pre.unbind(2):
            zh = torch.baddbmm(params["core.bias_hh_l0"][:, None], h, w_hh)
            r, u = torch.sigmoid(z[..., :2 * H] + zh[..., :2 * H]).chunk(2, dim=-1)  # reset, update
            n = torch.tanh(z[..., 2 * H:] + r * zh[..., 2 * H:])
            h = n + u * (h - n)  # = (1 - u) n + u h
    return torch.baddbmm(params["head.bias"][:, None], h, params["head.weight"].transpose(1, 2))


def train_side_by_side(
    models: list[SequenceModel],
    data: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    steps: int,
    lrs: list[float],
    generators: list[torch.Generator],
    batch_size: int = 64,
    clip: float | None = 1.0,
) -> list[float]:
    """Train K one-layer models of one cell type with Adam, side by side, in place.

    Model k trains on ``data[k]`` with minibatches drawn by ``generators[k]``, its gradient
    norm clipped at ``clip`` on its own, and Adam at rate ``lrs[k]``: what
    :func:`vanishing.train.train` with ``optimizer="adam"`` would do to it alone, up to float
    rounding (which a long run can amplify into a different network, another draw of the same
    experiment). Returns the rate each model's Adam parameter group actually held, in the
    order of ``models``, so that a caller can check that its grid was applied.
    """
    if not models or not all(isinstance(m, SequenceModel) for m in models):
        raise ValueError("models must be a non-empty list of SequenceModel")
    core = models[0].core
    cell = {nn.RNN: "rnn", nn.LSTM: "lstm", nn.GRU: "gru"}.get(type(core))
    if cell is None or core.num_layers != 1 or any(
        type(m.core) is not type(core) or m.core.num_layers != 1
        or getattr(m.core, "nonlinearity", None) != getattr(core, "nonlinearity", None)
        for m in models
    ):
        raise ValueError("models must all be one-layer models of one cell type and nonlinearity")
    K = len(models)
    for name, value in (("data", data), ("lrs", lrs), ("generators", generators)):
        if len(value) != K:
            raise ValueError(f"{name} must have one entry per model ({K}), got {len(value)}")
    n = len(data[0][0])
    if any(len(x) != n or len(y) != n for x, y in data):
        raise ValueError("data: every model's (inputs, targets) must have the same number of rows")
    lrs = [number(f"lrs[{i}]", lr) for i, lr in enumerate(lrs)]  # Python floats: set() and ==
    _check_schedule(steps=steps, eval_every=1, lr=min(lrs), optimizer="adam", allowed=("adam",),
                    clip=clip, batch_size=batch_size, n=n)
    nonlinearity = getattr(core, "nonlinearity", "tanh")
    names = [k for k, _ in models[0].named_parameters()]
    rates = sorted(set(lrs))  # one stacked leaf per rate, so that one Adam holds a group per rate
    members = [[k for k, lr in enumerate(lrs) if lr == rate] for rate in rates]
    order = [k for m in members for k in m]
    leaves = [{name: torch.stack([dict(models[k].named_parameters())[name].detach() for k in m])
               .clone().requires_grad_() for name in names} for m in members]
    x = torch.stack([data[k][0] for k in order])
    y = torch.stack([data[k][1] for k in order])
    gens = [generators[k] for k in order]
    opt = torch.optim.Adam([{"params": list(leaf.values()), "lr": rate}
                            for leaf, rate in zip(leaves, rates, strict=True)])
    rows = torch.arange(K, device=x.device)[:, None]
    for _ in range(steps):
        p = leaves[0] if len(leaves) == 1 else {
            name: torch.cat([leaf[name] for leaf in leaves]) for name in names}
        idx = torch.stack([torch.randint(0, n, (batch_size,), generator=g, device="cpu")
                           for g in gens]).to(x.device)  # as train.draw_batch draws them
        logits = side_by_side_logits(p, x[rows, idx], cell, nonlinearity)
        # the sum of the models' mean losses: each model's parameters get its own gradient
        loss = nn.functional.cross_entropy(
            logits.flatten(0, 1), y[rows, idx].flatten(), reduction="sum") / batch_size
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            for leaf in leaves:  # each model's gradient norm clipped, as clip_grad_norm_ does
                grads = {name: q.grad for name, q in leaf.items() if q.grad is not None}
                norm = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads.values()])
                norm = norm.sum(0).sqrt()
                scale = (clip / (norm + 1e-6)).clamp(max=1.0)
                # out of place: autograd may hand two leaves views of one buffer
                for name, g in grads.items():
                    leaf[name].grad = g * scale.view(-1, *[1] * (g.dim() - 1))
        opt.step()
    used = [0.0] * K
    with torch.no_grad():
        for leaf, m, group in zip(leaves, members, opt.param_groups, strict=True):
            for j, k in enumerate(m):
                used[k] = float(group["lr"])
                for name, q in models[k].named_parameters():
                    q.copy_(leaf[name][j])
    return used
