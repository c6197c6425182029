"""Sequence models: a vanilla RNN, an LSTM and a GRU behind one builder.

Each reads a batch of sequences of shape (batch, time, features) and predicts
from its last hidden state, which is what the long-time-lag tasks of
:mod:`vanishing.data` need.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from .checks import integer

__all__ = [
    "CELLS", "SequenceModel", "rnn", "lstm_step", "lstm_trace", "cell_contributions",
    "input_grad_by_lag",
]

CELLS = ("rnn", "lstm", "gru")


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
    num_layers: int = 1,
    nonlinearity: str = "tanh",
    forget_bias: float | None = None,
) -> SequenceModel:
    """Build a sequence model with ``cell`` in ``("rnn", "lstm", "gru")``.

    ``nonlinearity`` (``"tanh"`` or ``"relu"``) applies to the vanilla RNN only.
    ``forget_bias`` sets the LSTM's forget-gate bias (Gers et al. 2000 advise a
    positive value, so the cell starts out remembering); ``None`` keeps torch's
    default, which draws both bias vectors uniformly from +-1/sqrt(hidden_size):
    a random forget bias centred on zero.
    """
    if cell not in CELLS:
        raise ValueError(f"cell={cell!r} is unknown; allowed: {', '.join(CELLS)}")
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("output_size", output_size), ("num_layers", num_layers)):
        integer(name, value)
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity={nonlinearity!r} is unknown; allowed: 'tanh', 'relu'")
    if forget_bias is not None and cell != "lstm":
        raise ValueError(f"forget_bias applies to cell='lstm' only, got cell={cell!r}")
    if cell == "rnn":
        core: nn.RNNBase = nn.RNN(
            input_size, hidden_size, num_layers, nonlinearity=nonlinearity, batch_first=True
        )
    elif cell == "lstm":
        core = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
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
