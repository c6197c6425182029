"""History compression (Schmidhuber 1992): pass up only what the level below failed to predict.

A lower level learns to predict the next input from the recent past. Wherever
it predicts correctly, the input carries no new information and is dropped;
the inputs it did not expect (and their time stamps) form a much shorter
sequence for the level above. Time lags that were hundreds of steps long in
the raw stream become a handful of steps in the compressed one.

The pieces: :func:`surprise_sequences` (a task that is mostly predictable),
:class:`WindowPredictor` with :func:`train_predictor` (the lower level; a
feed-forward predictor over a window of past symbols, a simplification of
Schmidhuber's recurrent one), and :func:`compress` (the filter).
"""

from __future__ import annotations

import torch
from torch import nn

from .checks import integer, number

__all__ = [
    "surprise_sequences", "WindowPredictor", "train_predictor", "next_symbol_probs", "compress",
]


def surprise_sequences(
    n: int, length: int, *, keys: int = 4, cycle: int = 6, surprises: int = 2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences that are predictable except at a few steps; the label is the first symbol.

    Step 0 holds a key (one of ``keys`` symbols, the label). The rest walks
    through a cycle of ``cycle`` further symbols, each one the successor of the
    one before, except at ``surprises`` random steps where the walk jumps to a
    random cycle symbol and continues from there. A predictor that has learned
    "successor" misses exactly the key, the first cycle symbol (it only knows
    which key came) and the jumps, so the level above sees about ``2 + surprises``
    steps instead of ``length``. Returns one-hot inputs (n, length, keys + cycle) and labels (n,).
    """
    integer("n", n, 1)
    integer("keys", keys, 2)
    integer("cycle", cycle, 2)
    integer("surprises", surprises, 0)
    integer("length", length, surprises + 2)
    integer("seed", seed, 0)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, keys, (n,), generator=g)
    jump = torch.zeros(n, length, dtype=torch.bool)
    for row in range(n):
        jump[row, 2 + torch.randperm(length - 2, generator=g)[:surprises]] = True
    state = torch.randint(0, cycle, (n,), generator=g)
    seq = torch.empty(n, length, dtype=torch.long)
    seq[:, 0] = labels
    seq[:, 1] = keys + state
    for t in range(2, length):
        random_state = torch.randint(0, cycle, (n,), generator=g)
        state = torch.where(jump[:, t], random_state, (state + 1) % cycle)
        seq[:, t] = keys + state
    return nn.functional.one_hot(seq, keys + cycle).float(), labels


class WindowPredictor(nn.Module):
    """Predicts input x_t from the ``window`` inputs before it (zeros before the sequence
    starts)."""

    def __init__(self, symbols: int, *, window: int = 1, hidden: int = 32):
        super().__init__()
        integer("symbols", symbols, 2)
        integer("window", window, 1)
        integer("hidden", hidden, 1)
        self.symbols, self.window = symbols, window
        self.net = nn.Sequential(
            nn.Linear(symbols * window, hidden), nn.Tanh(), nn.Linear(hidden, symbols)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for every step of ``x`` (batch, time, symbols), each from the steps before it."""
        if x.dim() != 3 or x.shape[2] != self.symbols:
            raise ValueError(
                f"input must have shape (batch, time, {self.symbols}), got {tuple(x.shape)}"
            )
        b, t, s = x.shape
        padded = torch.cat([x.new_zeros(b, self.window, s), x], dim=1)
        # Context for step t: steps t-window .. t-1, oldest first.
        ctx = torch.cat([padded[:, i:i + t] for i in range(self.window)], dim=2)
        return self.net(ctx)


def train_predictor(
    model: WindowPredictor,
    inputs: torch.Tensor,
    *,
    steps: int,
    lr: float = 0.01,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Train the lower level to predict each next input (cross-entropy, Adam, minibatches of 64
    sequences drawn with ``generator``); returns the loss per step."""
    if not isinstance(model, WindowPredictor):
        raise ValueError(f"model must be a WindowPredictor, got {type(model).__name__}")
    integer("steps", steps, 1)
    number("lr", lr)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(inputs), (64,), generator=generator).to(inputs.device)
        x = inputs[idx]
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), x.argmax(dim=2).flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def next_symbol_probs(model: WindowPredictor, inputs: torch.Tensor) -> torch.Tensor:
    """The probability the predictor gave to the symbol that actually came, per step:
    (batch, time)."""
    with torch.no_grad():
        p = torch.softmax(model(inputs), dim=2)
    return (p * inputs).sum(dim=2)


def compress(
    inputs: torch.Tensor, probs: torch.Tensor, *, threshold: float = 0.5, time_stamps: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep only the steps whose input got probability below ``threshold``: the unpredicted ones.

    Returns ``(compressed, lengths)``: the kept inputs of each sequence in their
    order, right-aligned and padded with zero vectors on the left so that the
    last step of every row is its last kept input (the models of
    :mod:`vanishing.recurrent` read the last state), and how many steps each
    row kept. With ``time_stamps`` a last feature holds each kept step's
    position divided by the raw length, as Schmidhuber's upper level also
    received the time of each unexpected event.
    """
    if inputs.dim() != 3 or probs.shape != inputs.shape[:2]:
        raise ValueError(
            f"inputs must be (batch, time, features) and probs (batch, time); "
            f"got {tuple(inputs.shape)} and {tuple(probs.shape)}"
        )
    number("threshold", threshold, high=1.0, allowed="a number in (0, 1]")
    keep = probs < threshold
    lengths = keep.sum(dim=1)
    width = max(int(lengths.max()), 1)
    b, t, f = inputs.shape
    feats = f + 1 if time_stamps else f
    out = inputs.new_zeros(b, width, feats)
    stamps = torch.arange(t, dtype=inputs.dtype, device=inputs.device) / t
    for row in range(b):
        idx = keep[row].nonzero().flatten()
        if len(idx):
            out[row, width - len(idx):, :f] = inputs[row, idx]
            if time_stamps:
                out[row, width - len(idx):, f] = stamps[idx]
    return out, lengths
