"""Tests for vanishing.hierarchy: the surprise task, the next-step predictor and history compression."""

import pytest
import torch

from vanishing import hierarchy


def test_surprise_sequences_structure():
    x, y = hierarchy.surprise_sequences(5, 12, keys=3, cycle=4, surprises=0, seed=1)
    assert x.shape == (5, 12, 7) and y.shape == (5,)
    sym = x.argmax(dim=2)
    assert torch.equal(sym[:, 0], y)
    cyc = sym[:, 1:] - 3
    # With no surprises every cycle symbol is the successor of the one before.
    assert torch.equal(cyc[:, 1:], (cyc[:, :-1] + 1) % 4)


def test_surprise_sequences_jumps_at_most_surprises():
    x, _ = hierarchy.surprise_sequences(50, 30, keys=2, cycle=5, surprises=3, seed=0)
    cyc = x.argmax(dim=2)[:, 1:] - 2
    breaks = (cyc[:, 1:] != (cyc[:, :-1] + 1) % 5).sum(dim=1)
    assert int(breaks.max()) <= 3


def test_compress_by_hand():
    x = torch.eye(3)[torch.tensor([[0, 1, 2, 0], [2, 2, 2, 2]])]
    probs = torch.tensor([[0.1, 0.9, 0.2, 0.95], [0.1, 0.1, 0.1, 0.9]])
    out, lengths = hierarchy.compress(x, probs, threshold=0.5)
    assert lengths.tolist() == [2, 3]
    assert out.shape == (2, 3, 3)
    assert torch.equal(out[0, 0], torch.zeros(3))  # left padding
    assert out[0, 1:].argmax(dim=1).tolist() == [0, 2]
    stamped, _ = hierarchy.compress(x, probs, threshold=0.5, time_stamps=True)
    assert stamped.shape == (2, 3, 4)
    assert stamped[0, 1:, 3].tolist() == [0.0, 0.5]


def test_predictor_learns_successor_and_compression_shortens():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x, _ = hierarchy.surprise_sequences(256, 20, keys=2, cycle=4, surprises=1, seed=0)
    p = hierarchy.WindowPredictor(6, window=1, hidden=16)
    losses = hierarchy.train_predictor(p, x, steps=150, lr=0.03, generator=g)
    assert losses[-1] < losses[0]
    probs = hierarchy.next_symbol_probs(p, x)
    assert probs.shape == (256, 20)
    _, lengths = hierarchy.compress(x, probs)
    assert float(lengths.float().mean()) <= 4.0


def test_window_predictor_uses_only_the_past():
    p = hierarchy.WindowPredictor(3, window=2)
    x = torch.eye(3)[torch.tensor([[0, 1, 2, 1]])]
    y = x.clone()
    y[0, 3] = torch.tensor([1.0, 0.0, 0.0])  # change the last step only
    assert torch.allclose(p(x), p(y))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: hierarchy.surprise_sequences(0, 10), "n"),
        (lambda: hierarchy.surprise_sequences(2, 3, surprises=2), "length"),
        (lambda: hierarchy.surprise_sequences(2, 10, keys=1), "keys"),
        (lambda: hierarchy.surprise_sequences(2, 10, cycle=1), "cycle"),
        (lambda: hierarchy.WindowPredictor(1), "symbols"),
        (lambda: hierarchy.WindowPredictor(3, window=0), "window"),
        (lambda: hierarchy.WindowPredictor(3)(torch.zeros(2, 4)), "shape"),
        (lambda: hierarchy.train_predictor("x", torch.zeros(1, 2, 3), steps=1), "WindowPredictor"),
        (lambda: hierarchy.train_predictor(hierarchy.WindowPredictor(3), torch.zeros(1, 2, 3), steps=0), "steps"),
        (lambda: hierarchy.train_predictor(hierarchy.WindowPredictor(3), torch.zeros(1, 2, 3), steps=1, lr=0), "lr"),
        (lambda: hierarchy.compress(torch.zeros(2, 3, 4), torch.zeros(2, 4)), "probs"),
        (lambda: hierarchy.compress(torch.zeros(2, 3, 4), torch.zeros(2, 3), threshold=0), "threshold"),
    ],
)
def test_argument_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
