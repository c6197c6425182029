"""Behaviour and errors of the core library: seeding, devices, scales, builders, probes, training, data."""

from __future__ import annotations

import math
import sys

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

import vanishing as vg
from vanishing import checks, data, models, plots, probes, recurrent, train


# ---------------------------------------------------------------- argument checks
def test_number_check_bounds_and_message():
    assert checks.number("lr", 3) == 3.0 and checks.number("lr", math.inf) == math.inf
    assert checks.number("lr", np.float32(0.5)) == 0.5  # NumPy scalars are real numbers
    with pytest.raises(ValueError, match=r"pass float\(t\)"):
        checks.number("lr", torch.tensor(0.5))
    for bad in (0, -1.0, math.nan, True, "1", None, torch.tensor(0.5)):
        with pytest.raises(ValueError, match=r"^lr must be a positive number, got "):
            checks.number("lr", bad)
    assert checks.number("eps", 1.0, high=1.0) == 1.0  # high is allowed by default
    with pytest.raises(ValueError, match=r"^p must be in \(0, 1\), got 1.0$"):
        checks.number("p", 1.0, high=1.0, high_ok=False, allowed="in (0, 1)")
    assert checks.number("m", 0, low_ok=True) == 0.0
    with pytest.raises(ValueError, match="finite"):
        checks.number("lr", math.inf, high_ok=False, allowed="a positive finite number")


def test_choice_and_module_checks():
    assert checks.choice("norm", "batch", (None, "batch")) == "batch"
    with pytest.raises(ValueError, match=r"^norm=array\(\[1, 2\]\) is unknown"):  # not NumPy's own error
        checks.choice("norm", np.array([1, 2]), (None, "batch"))
    with pytest.raises(ValueError, match=r"^norm='group' is unknown; allowed: None, 'batch' or a callable$"):
        checks.choice("norm", "group", (None, "batch"), " or a callable")
    layer = nn.Linear(2, 2)
    assert checks.module(layer) is layer
    with pytest.raises(ValueError, match=r"^model must be a torch.nn.Module, got list$"):
        checks.module([layer])


# ---------------------------------------------------------------- seed, device, scale
def test_seed_makes_runs_identical():
    def run():
        vg.seed(3)
        m = models.mlp(in_features=4, out_features=2, depth=3, width=5, activation="tanh", init="xavier")
        return torch.cat([p.detach().flatten() for p in m.parameters()]), torch.rand(3), np.random.rand(2)

    a, b = run(), run()
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    vg.seed(4)
    other = models.mlp(in_features=4, out_features=2, depth=3, width=5, activation="tanh", init="xavier")
    assert not torch.equal(a[0], torch.cat([p.detach().flatten() for p in other.parameters()]))


def test_seed_pins_threads_and_rejects_bad_values(monkeypatch):
    vg.seed(0)
    assert torch.get_num_threads() == 1
    for bad in (-1, 1.5, "0", True, 2**32):
        with pytest.raises(ValueError, match="seed"):
            vg.seed(bad)
    monkeypatch.setenv(vg.THREADS_ENV, "zero")
    with pytest.raises(ValueError, match=vg.THREADS_ENV):
        vg.seed(0)


def test_device_default_and_override(monkeypatch):
    monkeypatch.delenv(vg.DEVICE_ENV, raising=False)
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert vg.device().type == expected
    monkeypatch.setenv(vg.DEVICE_ENV, "cpu")
    assert vg.device() == torch.device("cpu")
    assert vg.device("CPU") == torch.device("cpu")


def test_device_errors(monkeypatch):
    monkeypatch.setenv(vg.DEVICE_ENV, "tpu")
    with pytest.raises(ValueError, match=f"{vg.DEVICE_ENV}='tpu' is not a device"):
        vg.device()
    with pytest.raises(ValueError, match="allowed"):
        vg.device("cuda:x")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no cuda device"):
            vg.device("cuda")
        monkeypatch.setenv(vg.DEVICE_ENV, "cuda")
        with pytest.raises(ValueError, match=vg.DEVICE_ENV):
            vg.device()


def test_scale(monkeypatch):
    monkeypatch.delenv(vg.SCALE_ENV, raising=False)
    assert vg.scale() == "small"
    monkeypatch.setenv(vg.SCALE_ENV, "FULL")
    assert vg.scale() == "full"
    monkeypatch.setenv(vg.SCALE_ENV, "huge")
    with pytest.raises(ValueError, match="VANISHING_SCALE='huge'.*small, full"):
        vg.scale()


def test_progress_shows_a_learner_a_bar_and_the_book_nothing(monkeypatch, capsys):
    from vanishing import runtime

    monkeypatch.setenv(runtime.QUIET_ENV, "1")  # the book's own runs (conftest sets it too)
    items = range(5)
    assert runtime.progress(items) is items
    monkeypatch.delenv(runtime.QUIET_ENV)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert runtime.progress(items) is items  # run by a program (nbclient, pytest): nothing shown
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/learner/05_activations.ipynb")  # JupyterLab's kernel
    assert list(runtime.progress(range(5), desc="training")) == [0, 1, 2, 3, 4]
    err = capsys.readouterr().err
    assert "training" in err and "/5 [" in err  # tqdm's bar on stderr, for a learner ...
    assert err.rstrip(" \r").endswith("]")  # ... erased when done (leave=False)
    assert err.endswith("\r") and err.split("\r")[-2].strip() == ""
    stopped = runtime.progress(range(100), desc="stopped early")
    for step in stopped:
        if step == 3:
            break
    stopped.close()  # a loop left early (a diverged run) closes its bar
    assert "stopped early" in capsys.readouterr().err
    monkeypatch.setenv(runtime.QUIET_ENV, "0")  # forced on, outside Jupyter too
    monkeypatch.delenv("JPY_SESSION_NAME")
    assert runtime.progress(items) is not items
    monkeypatch.setitem(sys.modules, "tqdm", None)  # tqdm not installed: the items, unchanged
    assert runtime.progress(items) is items



# ---------------------------------------------------------------- models
@pytest.mark.parametrize("act", list(models.ACTIVATIONS))
@pytest.mark.parametrize("norm", list(models.NORMS))
def test_mlp_shapes(act, norm):
    m = models.mlp(in_features=3, out_features=4, depth=4, width=6, activation=act, norm=norm, residual=True)
    assert m(torch.randn(5, 3)).shape == (5, 4)
    assert len(m.linears()) == 5
    assert [b.residual for b in m.blocks] == [False, True, True, True]


def test_residual_block_adds_identity():
    vg.seed(0)
    block = models.Block(3, 3, "relu", None, residual=True)
    x = torch.randn(4, 3)
    assert torch.allclose(block(x), x + torch.relu(block.linear(x)))
    jac = torch.autograd.functional.jacobian(lambda v: block(v.unsqueeze(0)).squeeze(0), x[0])
    inner = torch.autograd.functional.jacobian(lambda v: torch.relu(block.linear(v)), x[0])
    assert torch.allclose(jac, torch.eye(3) + inner)


def test_inits_have_their_variance():
    vg.seed(0)
    layer = nn.Linear(400, 300)
    for init, act, var in [("xavier", "tanh", 2 / 700), ("he", "relu", 2 / 400), ("lecun", "linear", 1 / 400)]:
        models._init_weights(layer, init, act)
        assert float(layer.weight.detach().var()) == pytest.approx(var, rel=0.05)
        assert float(layer.bias.detach().abs().max()) == 0.0
    models._init_weights(layer, lambda w: nn.init.constant_(w, 0.5))
    assert float(layer.weight.detach().mean()) == 0.5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(depth=0), "depth must be a positive int"),
        (dict(depth=True), r"depth must be a positive int, got True"),  # bool is not a count
        (dict(width=2.5), "width"),
        (dict(activation="swish"), "activation='swish' is unknown; allowed: 'sigmoid'"),
        (dict(init="zeros"), "init='zeros' is unknown"),
        (dict(norm="group"), "norm='group' is unknown"),
        (dict(residual=1), "residual must be True or False"),
        (dict(branch_scale=0.5), "branch_scale .* needs residual=True"),
        (dict(residual=True, branch_scale=-1.0), "branch_scale must be a finite number >= 0"),
        (dict(residual=True, branch_scale=float("inf")), "branch_scale must be a finite number >= 0"),
        (dict(residual=True, branch_scale="1"), "branch_scale"),
    ],
)
def test_mlp_errors(kwargs, match):
    args = dict(in_features=3, out_features=2, depth=2, width=4) | kwargs
    with pytest.raises(ValueError, match=match):
        models.mlp(**args)


def test_mlp_branch_scale_multiplies_only_the_residual_branches():
    kw = dict(in_features=3, out_features=2, depth=4, width=5, activation="relu", init="he", residual=True)
    torch.manual_seed(0)
    plain = models.mlp(**kw)
    torch.manual_seed(0)
    scaled = models.mlp(branch_scale=0.25, **kw)
    # Block 0 changes the width (no skip) and the read-out is no branch: both untouched.
    assert torch.equal(scaled.blocks[0].linear.weight, plain.blocks[0].linear.weight)
    assert torch.equal(scaled.head.weight, plain.head.weight)
    for a, b in zip(scaled.blocks[1:], plain.blocks[1:], strict=True):
        assert torch.equal(a.linear.weight, b.linear.weight * 0.25)
        assert torch.equal(a.linear.bias, b.linear.bias)


def test_mlp_rejects_wrong_input_shape():
    m = models.mlp(in_features=3, out_features=2, depth=2, width=4)
    with pytest.raises(ValueError, match=r"input must have shape \(batch, 3\)"):
        m(torch.randn(5, 4))


# ---------------------------------------------------------------- probes
def test_grad_norms_match_hand_computation():
    # depth-1 network, linear activation: y = w2 (W1 x + b1) + b2, L = (y - t)^2.
    m = models.mlp(in_features=2, out_features=1, depth=1, width=2, activation="sigmoid")
    with torch.no_grad():
        m.blocks[0].linear.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0]]))
        m.blocks[0].linear.bias.copy_(torch.tensor([0.0, 0.5]))
        m.head.weight.copy_(torch.tensor([[2.0, -3.0]]))
        m.head.bias.zero_()
    x, t = np.array([0.3, -0.2]), 1.0
    z = np.array([[1.0, -1.0], [0.5, 2.0]]) @ x + np.array([0.0, 0.5])
    h = 1 / (1 + np.exp(-z))
    y = np.array([2.0, -3.0]) @ h
    dy = 2 * (y - t)
    g_head = dy * h
    g_first = np.outer(dy * np.array([2.0, -3.0]) * h * (1 - h), x)
    norms = probes.grad_norms(m, torch.tensor(x[None], dtype=torch.float32), torch.tensor([[t]]), nn.functional.mse_loss)
    assert list(norms) == ["blocks.0.linear.weight", "head.weight"]
    assert norms["head.weight"] == pytest.approx(np.linalg.norm(g_head), rel=1e-5)
    assert norms["blocks.0.linear.weight"] == pytest.approx(np.linalg.norm(g_first), rel=1e-5)
    assert all(p.grad is None for p in m.parameters())


def test_grad_norms_do_not_underflow():
    # Entries of 1e-30 are normal float32 numbers, but their squares are not: the norm must still be 1e-30 * sqrt(n).
    m = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(1.0)
    norms = probes.grad_norms(m, torch.full((1, 4), 1e-30), torch.zeros(1, 1), lambda out, t: (out - t).sum())
    assert norms["weight"] == pytest.approx(2e-30, rel=1e-6)


def test_grad_norms_vanish_in_deep_sigmoid_net():
    vg.seed(0)
    m = models.mlp(in_features=8, out_features=3, depth=15, width=16, activation="sigmoid", init="xavier")
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    norms = list(probes.grad_norms(m, x, y, nn.functional.cross_entropy).values())
    assert norms[0] < 1e-6 * norms[-1]


def test_grad_norms_restore_mode_and_errors():
    m = models.mlp(in_features=2, out_features=2, depth=2, width=3, norm="batch")
    m.eval()
    before = [b.clone() for b in m.buffers()]
    probes.grad_norms(m, torch.randn(4, 2) + 5, torch.tensor([0, 1, 0, 1]), nn.functional.cross_entropy, train=True)
    probes.activation_stats(m, torch.randn(4, 2) + 5, train=True)
    assert not any(mod.training for mod in m.modules())
    assert all(torch.equal(a, b) for a, b in zip(before, m.buffers(), strict=True)), "running statistics changed"
    with pytest.raises(ValueError, match="scalar"):
        probes.grad_norms(m, torch.randn(4, 2), torch.zeros(4, 2), lambda o, t: (o - t) ** 2)
    with pytest.raises(ValueError, match="no parameters"):
        probes.grad_norms(nn.ReLU(), torch.randn(2), torch.randn(2), nn.functional.mse_loss)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        probes.grad_norms("net", torch.randn(2), torch.randn(2), nn.functional.mse_loss)


def test_activation_stats_saturation_and_dead_units():
    sat = nn.Sequential(nn.Linear(1, 4), nn.Sigmoid())
    with torch.no_grad():
        sat[0].weight.fill_(8.0)  # sigma'(8) = 3.4e-4: saturated, not yet exactly zero
        sat[0].bias.zero_()
    (s,) = probes.activation_stats(sat, torch.tensor([[1.0], [-1.0]]))
    assert s["kind"] == "Sigmoid" and s["saturated"] == 1.0 and s["dead"] == 0.0
    dead = nn.Sequential(nn.Linear(1, 4), nn.ReLU())
    with torch.no_grad():
        dead[0].weight.copy_(torch.tensor([[1.0], [1.0], [0.0], [0.0]]))
        dead[0].bias.copy_(torch.tensor([-10.0, 1.0, -1.0, 1.0]))
    (d,) = probes.activation_stats(dead, torch.tensor([[1.0], [2.0]]))
    assert d["dead"] == 0.5  # units 0 and 2 never fire
    with pytest.raises(ValueError, match="no activation modules"):
        probes.activation_stats(nn.Linear(1, 1), torch.ones(1, 1))


# ---------------------------------------------------------------- training
def test_train_learns_and_records():
    vg.seed(0)
    (xtr, ytr), test = data.digits()
    m = models.mlp(in_features=64, out_features=10, depth=2, width=32, activation="relu", init="he")
    h = train.train(m, (xtr, ytr), steps=60, lr=0.1, test_data=test, eval_every=20, record_grad_norms=True)
    assert h["step"] == [1, 20, 40, 60]
    assert h["acc"][-1] > 0.8 and h["test_acc"][-1] > 0.8
    assert h["loss"][-1] < h["loss"][0]
    assert set(h["grad_norms"][0]) == set(probes.weight_names(m))


def test_train_clip_and_errors():
    vg.seed(0)
    x, y = torch.randn(64, 2), torch.randint(0, 2, (64,))
    m = models.mlp(in_features=2, out_features=2, depth=2, width=8)
    h = train.train(m, (x, y), steps=5, lr=0.1, batch_size=None, clip=0.01, eval_every=5)
    assert len(h["loss"]) == 2
    for kwargs, match in [
        (dict(steps=0), "steps"),
        (dict(lr=-1.0), "lr"),
        (dict(optimizer="lbfgs"), "optimizer='lbfgs' is unknown"),
        (dict(batch_size=1000), "batch_size"),
        (dict(optimizer="rprop"), "optimizer='rprop' is unknown"),
        (dict(clip=0), "clip"),
        (dict(test_data=(x, y.float())), "^test_data: targets must be class indices"),
        (dict(test_data=(x, y[:-1])), "^test_data: 64 inputs but 63 targets"),
        (dict(test_data=x), "^test_data must be a pair"),
    ]:
        with pytest.raises(ValueError, match=match):
            train.train(m, (x, y), **(dict(steps=1, lr=0.1) | kwargs))
    with pytest.raises(ValueError, match="^data: targets must be class indices"):  # e.g. regression targets
        train.train(m, (x, torch.randn(64, 2)), steps=1, lr=0.1)
    with pytest.raises(FloatingPointError, match="loss became") as err:
        train.train(m, (x * float("nan"), y), steps=1, lr=0.1)
    # train.Diverged carries the step and the record so far (nothing evaluated before step 1)
    assert isinstance(err.value, train.Diverged) and err.value.step == 1 and err.value.history["step"] == []


# ---------------------------------------------------------------- data
def test_digits_split_and_standardization():
    (xtr, ytr), (xte, yte) = data.digits(test_fraction=0.25, seed=1)
    assert xtr.shape[1] == 64 and len(xtr) + len(xte) == 1797
    assert abs(float(xtr.mean())) < 1e-4
    assert set(ytr.tolist()) == set(range(10))
    assert float(xte.abs().max()) < 50, "a pixel blank in training must not become an outlier in the test set"
    with pytest.raises(ValueError, match="test_fraction"):
        data.digits(test_fraction=1.0)
    (same, _), _ = data.digits(test_fraction=np.float32(0.25), seed=1)  # a NumPy scalar, passed on as a float
    assert torch.equal(same, xtr)


def test_synthetic_tasks():
    s, lab = data.first_input_recall(20, lag=7, symbols=3)
    assert s.shape == (20, 8, 3) and torch.equal(s[:, 0].argmax(1), lab)
    with pytest.raises(ValueError, match="lag"):
        data.first_input_recall(5, 0)


# ---------------------------------------------------------------- recurrent builders
@pytest.mark.parametrize("cell", recurrent._CELLS)
def test_rnn_builder(cell):
    m = recurrent.rnn(cell=cell, input_size=2, hidden_size=5, output_size=3)
    assert m(torch.randn(4, 7, 2)).shape == (4, 3)


def test_lstm_forget_bias_and_errors():
    m = recurrent.rnn(cell="lstm", input_size=2, hidden_size=4, output_size=1, forget_bias=2.0)
    total = m.core.bias_ih_l0 + m.core.bias_hh_l0
    assert torch.all(total[4:8] == 2.0)
    with pytest.raises(ValueError, match="forget_bias applies to cell='lstm' only"):
        recurrent.rnn(cell="gru", input_size=2, hidden_size=4, output_size=1, forget_bias=1.0)
    with pytest.raises(ValueError, match="cell='transformer' is unknown"):
        recurrent.rnn(cell="transformer", input_size=2, hidden_size=4, output_size=1)
    with pytest.raises(ValueError, match=r"shape \(batch, time, 2\)"):
        m(torch.randn(3, 2))


# ---------------------------------------------------------------- plots
def test_layer_profile_marks_zeros():
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plots.style()
    fig, ax = plt.subplots()
    plots.layer_profile(ax, {"a": 1e-3, "b": 0.0, "c": 1.0}, label="sigmoid")
    assert ax.get_yscale() == "log"
    assert len(ax.lines) == 2 and list(ax.lines[0].get_xdata()) == [1, 3]
    assert ax.lines[0].get_color() == plots.COLORS["sigmoid"]
    with pytest.raises(ValueError, match="values"):
        plots.layer_profile(ax, [])
    plt.close(fig)
    assert math.isclose(matplotlib.rcParams["figure.dpi"], 100)


def test_draw_batch_is_seeded_and_full_batch_is_the_set():
    x, y = torch.arange(20.0).reshape(10, 2), torch.arange(10)
    assert train.draw_batch(x, y, None, None) == (x, y)
    a = train.draw_batch(x, y, 4, torch.Generator().manual_seed(1))
    b = train.draw_batch(x, y, 4, torch.Generator().manual_seed(1))
    assert a[0].shape == (4, 2) and torch.equal(a[0], b[0]) and torch.equal(a[0][:, 0] / 2, a[1].float())


def test_integer_arguments_name_their_allowed_range():
    """One check serves every count, size and seed: bounds named, bool refused, value returned."""
    with pytest.raises(ValueError, match=r"seed: value must be an int in \[0, 4294967295\], got 4294967296"):
        vg.seed(2**32)
    with pytest.raises(ValueError, match=r"batch_size must be an int in \[1, 8\], got 9"):
        train._check_schedule(steps=1, eval_every=1, lr=0.1, optimizer="sgd", allowed=("sgd",), clip=None,
                             batch_size=9, n=8)
    with pytest.raises(ValueError, match=r"seed must be an int >= 0, got -1"):
        data.first_input_recall(4, lag=3, seed=-1)
    with pytest.raises(ValueError, match=r"lag must be a positive int, got 2.0"):
        data.first_input_recall(4, lag=2.0)
