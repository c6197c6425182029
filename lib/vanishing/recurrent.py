"""Sequence models: a vanilla RNN, an LSTM and a GRU behind one builder.

Each reads a batch of sequences of shape (batch, time, features) and predicts
from its last hidden state, which is what the long-time-lag tasks of
:mod:`vanishing.data` need. Besides the builder (with the initializations a fair
comparison needs: orthogonal or identity recurrent weights, set gate biases,
chrono initialization), the module looks inside an LSTM step by step
(:func:`lstm_step`, :func:`lstm_trace`), measures the gradient by time lag
(:func:`input_grad_by_lag`), and trains many small models of one shape at once
(:func:`train_stacked`), as :mod:`vanishing.sweeps` does for MLPs.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from . import train as train_mod

__all__ = [
    "CELLS", "RECURRENT_INITS", "SequenceModel", "rnn", "chrono_bias", "lstm_step", "lstm_trace",
    "input_grad_by_lag", "train_stacked",
]

CELLS = ("rnn", "lstm", "gru")
RECURRENT_INITS = ("default", "orthogonal", "identity")


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


def chrono_bias(hidden_size: int, t_max: float, *, generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """Chrono initialization of an LSTM's forget-gate bias (Tallec & Ollivier 2018).

    Each unit gets ``log(u)`` with ``u`` uniform on ``[1, t_max - 1]``, so that the
    cell's characteristic forgetting times ``1 / (1 - f)`` spread over the range of
    dependencies the data may hold, up to ``t_max`` steps; the input-gate bias is
    then set to minus this (see :func:`rnn`).
    """
    if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
        raise ValueError(f"hidden_size must be a positive int, got {hidden_size!r}")
    if isinstance(t_max, bool) or not isinstance(t_max, (int, float)) or not t_max > 2:
        raise ValueError(f"t_max must be a number above 2 (the longest dependency), got {t_max!r}")
    u = torch.rand(hidden_size, generator=generator) * (t_max - 2) + 1
    return u.log()


def rnn(
    *,
    cell: str = "rnn",
    input_size: int,
    hidden_size: int,
    output_size: int,
    num_layers: int = 1,
    nonlinearity: str = "tanh",
    recurrent_init: str = "default",
    forget_bias: float | None = None,
    input_bias: float | None = None,
    chrono: float | None = None,
) -> SequenceModel:
    """Build a sequence model with ``cell`` in ``("rnn", "lstm", "gru")``.

    ``nonlinearity`` (``"tanh"`` or ``"relu"``) applies to the vanilla RNN only, and so
    does ``recurrent_init``: ``"default"`` keeps torch's uniform draw from
    +-1/sqrt(hidden_size), a contracting matrix (spectral radius about 0.58);
    ``"orthogonal"`` draws an orthogonal recurrent matrix (every singular value 1,
    Saxe et al. 2014); ``"identity"`` sets it to the identity with zero biases, the
    IRNN of Le et al. (2015), meant for ``nonlinearity="relu"``.

    For the LSTM, ``forget_bias`` and ``input_bias`` set the forget- and input-gate
    biases (Gers et al. 2000 advise a positive forget bias, so the cell starts out
    remembering); ``chrono=T`` draws the forget bias with :func:`chrono_bias` and sets
    the input bias to its negative (Tallec & Ollivier 2018), and excludes the other two.
    ``None`` keeps torch's default, which draws both bias vectors uniformly from
    +-1/sqrt(hidden_size): a random gate bias centred on zero.
    """
    if cell not in CELLS:
        raise ValueError(f"cell={cell!r} is unknown; allowed: {', '.join(CELLS)}")
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("output_size", output_size), ("num_layers", num_layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity={nonlinearity!r} is unknown; allowed: 'tanh', 'relu'")
    if recurrent_init not in RECURRENT_INITS:
        raise ValueError(
            f"recurrent_init={recurrent_init!r} is unknown; allowed: {', '.join(RECURRENT_INITS)}"
        )
    if recurrent_init != "default" and cell != "rnn":
        raise ValueError(f"recurrent_init applies to cell='rnn' only, got cell={cell!r}")
    for name, value in (("forget_bias", forget_bias), ("input_bias", input_bias),
                        ("chrono", chrono)):
        if value is not None and cell != "lstm":
            raise ValueError(f"{name} applies to cell='lstm' only, got cell={cell!r}")
    if chrono is not None and (forget_bias is not None or input_bias is not None):
        raise ValueError("chrono sets both gate biases: give forget_bias and input_bias as None")
    if cell == "rnn":
        core: nn.RNNBase = nn.RNN(
            input_size, hidden_size, num_layers, nonlinearity=nonlinearity, batch_first=True
        )
        if recurrent_init != "default":
            with torch.no_grad():
                for name, p in core.named_parameters():
                    if name.startswith("weight_hh"):
                        if recurrent_init == "orthogonal":
                            nn.init.orthogonal_(p)
                        else:
                            p.copy_(torch.eye(hidden_size))
                    elif name.startswith("bias") and recurrent_init == "identity":
                        p.zero_()
    elif cell == "lstm":
        core = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
        biases = {}  # PyTorch orders the gates input, forget, cell, output
        if chrono is not None:
            fb = chrono_bias(hidden_size, chrono)
            biases = {0: -fb, 1: fb}
        else:
            biases = {k: torch.full((hidden_size,), float(v))
                      for k, v in ((0, input_bias), (1, forget_bias)) if v is not None}
        with torch.no_grad():
            for name, p in core.named_parameters():
                for gate, value in biases.items():
                    rows = slice(gate * hidden_size, (gate + 1) * hidden_size)
                    # the two bias vectors add, so put the whole gate bias in one of them
                    if name.startswith("bias_ih"):
                        p[rows] = value
                    elif name.startswith("bias_hh"):
                        p[rows] = 0.0
    else:
        core = nn.GRU(input_size, hidden_size, num_layers, batch_first=True)
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


def input_grad_by_lag(
    model: SequenceModel, x: torch.Tensor, targets: torch.Tensor,
    loss_fn=nn.functional.cross_entropy,
) -> torch.Tensor:
    """Mean over the batch of ||dL/dx_t|| for every step t, as a tensor indexed by lag T - t.

    Entry ``k`` is the gradient norm at the input ``k`` steps before the last
    one (``k = 0`` is the last input). The loss is read from the last step, so
    this is how much the error signal has shrunk after travelling back ``k``
    steps in time.
    """
    if not isinstance(model, SequenceModel):
        raise ValueError(f"model must be a SequenceModel, got {type(model).__name__}")
    x = x.detach().clone().requires_grad_(True)
    loss = loss_fn(model(x), targets)
    if loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar, got a tensor of shape {tuple(loss.shape)}")
    (g,) = torch.autograd.grad(loss, x)
    return g.norm(dim=2).mean(dim=0).flip(0).detach()


# --- Many small models of one shape, trained at once. ---

def _stacked_logits(cell: str, p: dict[str, torch.Tensor], x: torch.Tensor,
                    nonlinearity: str) -> torch.Tensor:
    """Logits (K, batch, out) of K one-layer models with stacked parameters ``p`` on ``x``
    of shape (K, batch, time, in), written out with PyTorch's equations and gate order."""
    k, b, t, _ = x.shape
    bias = (p["core.bias_ih_l0"] + p["core.bias_hh_l0"]) if cell != "gru" else p["core.bias_ih_l0"]
    pre = torch.baddbmm(bias[:, None], x.flatten(1, 2), p["core.weight_ih_l0"].transpose(1, 2))
    pre_t = pre.view(k, b, t, -1).unbind(2)  # the input's share of every pre-activation, per step
    w_hh = p["core.weight_hh_l0"].transpose(1, 2)
    hidden = w_hh.shape[1]
    h = x.new_zeros(k, b, hidden)
    c = x.new_zeros(k, b, hidden)
    act = torch.tanh if nonlinearity == "tanh" else torch.relu
    for z_in in pre_t:
        if cell == "rnn":
            h = act(torch.baddbmm(z_in, h, w_hh))
        elif cell == "lstm":
            i, f, g, o = torch.baddbmm(z_in, h, w_hh).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        else:  # GRU: the reset gate multiplies the recurrent part of the candidate, bias included
            rec = torch.baddbmm(p["core.bias_hh_l0"][:, None], h, w_hh)
            ir, iz, i_n = z_in.chunk(3, dim=-1)
            hr, hz, h_n = rec.chunk(3, dim=-1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            h = (1 - z) * torch.tanh(i_n + r * h_n) + z * h
    return torch.baddbmm(p["head.bias"][:, None], h, p["head.weight"].transpose(1, 2))


def train_stacked(
    models: list[SequenceModel],
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    steps: int,
    lr: float | list[float],
    batch_size: int = 64,
    clip: float | None = 1.0,
    generators: list[torch.Generator] | None = None,
) -> list[SequenceModel]:
    """Train K one-layer models of one cell type and shape as one batched computation, in place.

    ``data = (inputs, targets)`` holds each model's own training set, shapes
    (K, n, time, in) and (K, n). Each model gets what ``train.train(model, ...,
    optimizer="adam", clip=clip, generator=generators[k])`` would give it alone:
    its own minibatches (drawn with its generator), cross-entropy loss, gradient
    norm clipped at ``clip``, and an Adam update with its own learning rate
    (``lr`` is one number or one per model) - equal up to float rounding, which a
    long run can amplify into a different network. On a CPU, where a small
    recurrent model's step is mostly per-call overhead, K models cost little more
    than one.
    """
    if not models or not all(isinstance(m, SequenceModel) for m in models):
        raise ValueError("models must be a non-empty list of SequenceModel")
    cores = [m.core for m in models]
    kind = {type(c) for c in cores}
    if len(kind) != 1 or any(c.num_layers != 1 or c.bidirectional for c in cores):
        raise ValueError("models must share one cell type, each with one unidirectional layer")
    shapes = {tuple((n, tuple(q.shape)) for n, q in m.named_parameters()) for m in models}
    if len(shapes) != 1:
        raise ValueError("models must have the same parameter shapes")
    cell = {nn.RNN: "rnn", nn.LSTM: "lstm", nn.GRU: "gru"}[kind.pop()]
    nonlinearity = getattr(cores[0], "nonlinearity", "tanh")
    if cell == "rnn" and len({c.nonlinearity for c in cores}) != 1:
        raise ValueError("models must share one nonlinearity")
    n_models = len(models)
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError("data must be a pair (inputs, targets)")
    inputs, targets = data
    if inputs.dim() != 4 or inputs.shape[0] != n_models or inputs.shape[3] != cores[0].input_size:
        raise ValueError(f"data inputs must have shape ({n_models}, n, time, "
                         f"{cores[0].input_size}), got {tuple(inputs.shape)}")
    if targets.shape != inputs.shape[:2]:
        raise ValueError(f"data targets must have shape {tuple(inputs.shape[:2])}, "
                         f"got {tuple(targets.shape)}")
    lrs = [lr] * n_models if not isinstance(lr, (list, tuple)) else list(lr)
    if len(lrs) != n_models or any(
        isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 for v in lrs
    ):
        raise ValueError(f"lr must be a positive number or a list of {n_models}, got {lr!r}")
    train_mod.check_schedule(steps=steps, eval_every=1, lr=lrs[0], optimizer="adam",
                             allowed=("adam",), clip=clip, batch_size=batch_size,
                             n=inputs.shape[1])
    if generators is None:
        generators = [torch.Generator().manual_seed(k) for k in range(n_models)]
    if len(generators) != n_models:
        raise ValueError(f"generators must hold one torch.Generator per model ({n_models})")

    names = [n for n, _ in models[0].named_parameters()]
    p = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).clone()
         .requires_grad_() for n in names}
    state = {n: (torch.zeros_like(q), torch.zeros_like(q)) for n, q in p.items()}
    lr_t = torch.tensor(lrs, dtype=inputs.dtype, device=inputs.device)
    beta1, beta2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults
    rows = torch.arange(n_models, device=inputs.device)[:, None]
    for step in range(1, steps + 1):
        idx = torch.stack([
            torch.randint(0, inputs.shape[1], (batch_size,), generator=g, device="cpu")
            for g in generators
        ]).to(inputs.device)
        logits = _stacked_logits(cell, p, inputs[rows, idx], nonlinearity)
        # the sum of the models' mean losses: each model's parameters get its own gradient
        loss = nn.functional.cross_entropy(
            logits.flatten(0, 1), targets[rows, idx].flatten(), reduction="sum") / batch_size
        if not torch.isfinite(loss):
            raise FloatingPointError(f"train_stacked: the loss became {loss.item()} at step {step}")
        grads = torch.autograd.grad(loss, list(p.values()))
        if clip is not None:  # as clip_grad_norm_ does for one model, per model
            norm = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
            scale = (clip / (norm + 1e-6)).clamp(max=1.0)
            grads = tuple(g * scale.view(-1, *[1] * (g.dim() - 1)) for g in grads)
        with torch.no_grad():
            for (name, q), g in zip(p.items(), grads, strict=True):
                m, v = state[name]
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (v.sqrt() / math.sqrt(1 - beta2 ** step)).add_(eps)
                step_size = (lr_t / (1 - beta1 ** step)).view(-1, *[1] * (q.dim() - 1))
                q.sub_(step_size * m / denom)
    with torch.no_grad():
        for k, m in enumerate(models):
            for name, q in m.named_parameters():
                q.copy_(p[name][k])
    return models
