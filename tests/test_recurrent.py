"""Tests for vanishing.recurrent: the builder and the additions that look inside an LSTM."""

import math

import numpy as np
import pytest
import torch

from vanishing import recurrent


def test_rnn_builder_shapes_and_forget_bias():
    for cell in recurrent._CELLS:
        m = recurrent.rnn(cell=cell, input_size=3, hidden_size=5, output_size=2)
        assert m(torch.zeros(4, 7, 3)).shape == (4, 2)
    m = recurrent.rnn(cell="lstm", input_size=3, hidden_size=5, output_size=2, forget_bias=2.0)
    total = m.core.bias_ih_l0 + m.core.bias_hh_l0
    assert torch.allclose(total[5:10], torch.full((5,), 2.0))


def test_lstm_step_by_hand_for_one_unit():
    torch.manual_seed(0)
    core = torch.nn.LSTM(1, 1, batch_first=True)
    x, h, c = torch.tensor([[0.5]]), torch.tensor([[0.2]]), torch.tensor([[-0.3]])
    z = x * core.weight_ih_l0[:, 0] + core.bias_ih_l0 + h * core.weight_hh_l0[:, 0] + core.bias_hh_l0
    i, f, g, o = torch.sigmoid(z[0, 0]), torch.sigmoid(z[0, 1]), torch.tanh(z[0, 2]), torch.sigmoid(z[0, 3])
    c_new = f * c + i * g
    h2, c2, gates = recurrent.lstm_step(core, x, h, c)
    assert torch.allclose(c2, c_new) and torch.allclose(h2, o * torch.tanh(c_new))
    assert torch.allclose(gates["f"], f.reshape(1, 1))


def test_lstm_trace_matches_nn_lstm():
    torch.manual_seed(1)
    m = recurrent.rnn(cell="lstm", input_size=3, hidden_size=4, output_size=2, forget_bias=1.0)
    x = torch.randn(5, 6, 3)
    tr = recurrent.lstm_trace(m, x)
    ref, (h_n, c_n) = m.core(x)
    assert torch.allclose(tr["h"], ref, atol=1e-6)
    assert torch.allclose(tr["c"][:, -1], c_n[0], atol=1e-6)
    assert set(tr) == {"h", "c", "i", "f", "g", "o"}


def test_input_grad_by_lag_linear_rnn_by_hand():
    # A one-unit linear RNN h_t = w h_{t-1} + u x_t, read out as logits (v h_T, 0), cross-entropy
    # with class 1: dL/d(v h_T) = p0 = sigmoid(v h_T), so dL/dx_{T-k} = p0 v u w^k.
    m = recurrent.rnn(cell="rnn", input_size=1, hidden_size=1, output_size=2, nonlinearity="relu")
    with torch.no_grad():
        m.core.weight_hh_l0.fill_(0.5)
        m.core.weight_ih_l0.fill_(2.0)
        m.core.bias_hh_l0.zero_()
        m.core.bias_ih_l0.zero_()
        m.head.weight.copy_(torch.tensor([[0.25], [0.0]]))
        m.head.bias.zero_()
    x = torch.ones(1, 4, 1)  # keeps the ReLU in its linear part: h = 2, 3, 3.5, 3.75
    g = recurrent.input_grad_by_lag(m, x, torch.tensor([1]))
    p0 = 1 / (1 + math.exp(-0.25 * 3.75))
    expected = torch.tensor([p0 * 0.25 * 2.0 * 0.5**k for k in range(4)])
    torch.testing.assert_close(g, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: recurrent.rnn(cell="x", input_size=1, hidden_size=1, output_size=1), "cell"),
        (lambda: recurrent.rnn(cell="rnn", input_size=1, hidden_size=1, output_size=1, forget_bias=1.0),
         "forget_bias"),
        (lambda: recurrent.lstm_step(torch.nn.LSTM(1, 1, num_layers=2), torch.zeros(1, 1), torch.zeros(1, 1),
                                     torch.zeros(1, 1)), "one-layer"),
        (lambda: recurrent.lstm_trace(recurrent.rnn(cell="gru", input_size=1, hidden_size=1, output_size=1),
                                      torch.zeros(1, 2, 1)), "lstm"),
        (lambda: recurrent.lstm_trace(recurrent.rnn(cell="lstm", input_size=2, hidden_size=1, output_size=1),
                                      torch.zeros(1, 2, 1)), "shape"),
        (lambda: recurrent.input_grad_by_lag(torch.nn.Linear(1, 1), torch.zeros(1, 2, 1), torch.zeros(1)),
         "SequenceModel"),
    ],
)
def test_argument_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_cell_contributions_sum_to_the_cell_and_match_a_hand_unroll():
    torch.manual_seed(2)
    m = recurrent.rnn(cell="lstm", input_size=3, hidden_size=4, output_size=2, forget_bias=2.0)
    tr = recurrent.lstm_trace(m, torch.randn(5, 6, 3))
    parts = recurrent.cell_contributions(tr)
    assert parts.shape == (5, 6, 4)
    assert torch.allclose(parts.sum(1), tr["c"][:, -1], atol=1e-6)
    # by hand: the first step's write, scaled by every later forget gate; the last step's write as is
    first = tr["i"][:, 0] * tr["g"][:, 0] * tr["f"][:, 1:].prod(1)
    assert torch.allclose(parts[:, 0], first) and torch.allclose(parts[:, -1], tr["i"][:, -1] * tr["g"][:, -1])
    for t in range(6):  # every term by hand, so that permuted or mis-scaled middle terms are caught too
        assert torch.allclose(parts[:, t], tr["i"][:, t] * tr["g"][:, t] * tr["f"][:, t + 1:].prod(1))
    with pytest.raises(ValueError, match="trace"):
        recurrent.cell_contributions({"h": tr["h"]})


def _models(cell: str, seeds, nonlinearity: str = "tanh"):
    out = []
    for s in seeds:
        torch.manual_seed(s)
        kw = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        out.append(recurrent.rnn(cell=cell, input_size=3, hidden_size=5, output_size=4, **kw))
    return out


@pytest.mark.parametrize("cell, nonlinearity", [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"),
                                                ("gru", "tanh")])
def test_side_by_side_logits_equal_each_models_own_forward(cell, nonlinearity):
    models = _models(cell, (0, 1, 2), nonlinearity)
    x = torch.randn(3, 6, 7, 3, generator=torch.Generator().manual_seed(0))
    params = {n: torch.stack([dict(m.named_parameters())[n] for m in models])
              for n, _ in models[0].named_parameters()}
    with torch.no_grad():
        stacked = recurrent.side_by_side_logits(params, x, cell, nonlinearity)
        for k, m in enumerate(models):
            assert torch.allclose(stacked[k], m(x[k]), atol=1e-6)


@pytest.mark.parametrize("cell, nonlinearity", [("rnn", "tanh"), ("lstm", "tanh"), ("gru", "tanh")])
def test_train_side_by_side_equals_training_each_model_alone(cell, nonlinearity):
    """Three models, two rates (the middle model's differs from its neighbours'), 20 steps of
    Adam with clipping side by side give what train.train gives each model alone."""
    from vanishing import train

    seeds, lrs = (0, 1, 2), [0.01, 0.003, 0.01]
    data = []
    for s in seeds:
        g = torch.Generator().manual_seed(100 + s)
        data.append((torch.randn(40, 6, 3, generator=g), torch.randint(0, 4, (40,), generator=g)))
    together = _models(cell, seeds, nonlinearity)
    used = recurrent.train_side_by_side(
        together, data, steps=20, lrs=lrs, batch_size=8, clip=0.5,
        generators=[torch.Generator().manual_seed(s) for s in seeds])
    assert used == lrs
    alone = _models(cell, seeds, nonlinearity)
    for k, (m, s) in enumerate(zip(alone, seeds, strict=True)):
        train.train(m, data[k], steps=20, lr=lrs[k], optimizer="adam", batch_size=8, clip=0.5,
                    eval_every=100, generator=torch.Generator().manual_seed(s))
    fresh = _models(cell, seeds, nonlinearity)
    for a, b, f in zip(together, alone, fresh, strict=True):
        for (name, p), q, r in zip(a.named_parameters(), b.parameters(), f.parameters(), strict=True):
            assert not torch.allclose(p, r), f"{name} did not train"
            assert torch.allclose(p, q, atol=1e-5), name
    # a swapped rate is caught: model 1 trained at 0.01 differs from model 1 trained at 0.003
    swapped = _models(cell, seeds, nonlinearity)
    recurrent.train_side_by_side(swapped, data, steps=20, lrs=[0.01, 0.01, 0.01], batch_size=8,
                                 clip=0.5, generators=[torch.Generator().manual_seed(s) for s in seeds])
    assert not torch.allclose(swapped[1].head.weight, alone[1].head.weight, atol=1e-4)
    # a NumPy scalar rate next to the float it rounds from: two rates, each model in one group
    used = recurrent.train_side_by_side(_models(cell, seeds, nonlinearity), data, steps=1,
                                        lrs=[0.1, np.float32(0.1), 0.1], batch_size=8,
                                        generators=[torch.Generator().manual_seed(s) for s in seeds])
    assert used == [0.1, float(np.float32(0.1)), 0.1]


@pytest.mark.parametrize("kw, match", [
    (dict(lrs=[0.01]), "lrs must have one entry per model"),
    (dict(lrs=[0.01, -1.0]), r"^lrs\[1\] must be a positive number"),
    (dict(lrs=[0.01, "a"]), r"^lrs\[1\] must be a positive number"),
    (dict(steps=0), "steps"),
    (dict(clip=0.0), "clip"),
    (dict(batch_size=100), "batch_size"),
])
def test_train_side_by_side_errors(kw, match):
    models = _models("rnn", (0, 1))
    data = [(torch.zeros(10, 4, 3), torch.zeros(10, dtype=torch.long))] * 2
    args = dict(steps=2, lrs=[0.01, 0.01], batch_size=4,
                generators=[torch.Generator(), torch.Generator()]) | kw
    with pytest.raises(ValueError, match=match):
        recurrent.train_side_by_side(models, data, **args)


def test_train_side_by_side_rejects_mixed_cells_and_bad_inputs():
    data = [(torch.zeros(10, 4, 3), torch.zeros(10, dtype=torch.long))] * 2
    gens = [torch.Generator(), torch.Generator()]
    mixed = _models("rnn", (0,)) + _models("gru", (1,))
    with pytest.raises(ValueError, match="one cell type"):
        recurrent.train_side_by_side(mixed, data, steps=1, lrs=[0.1, 0.1], generators=gens, batch_size=4)
    with pytest.raises(ValueError, match="cell="):
        recurrent.side_by_side_logits({}, torch.zeros(1, 1, 1, 3), "transformer")
    with pytest.raises(ValueError, match="x must have shape"):
        recurrent.side_by_side_logits({}, torch.zeros(1, 1, 3), "rnn")
