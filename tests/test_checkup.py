"""Tests of vanishing.checkup: hand-computed numbers, one broken and one healthy net per verdict, errors."""

from __future__ import annotations

import json
import math

import matplotlib
import pytest
import torch
from torch import nn

import vanishing as vg
from vanishing import checkup, data, models, probes, recurrent

matplotlib.use("Agg")  # tests draw off-screen; the book's notebooks never set this

CE = nn.functional.cross_entropy


@pytest.fixture(scope="module")
def digits_batch():
    (x, y), _ = data.digits()
    return x[:128], y[:128]


def _mlp(**kw) -> nn.Module:
    vg.seed(0)
    args = dict(in_features=64, out_features=10, depth=20, width=64)
    args.update(kw)
    return models.mlp(**args)


def _scaled_normal(std: float):
    def init(w: torch.Tensor) -> None:
        nn.init.normal_(w, 0.0, std / math.sqrt(w.shape[1]))

    return init


# ---- numbers computed by hand ---------------------------------------------------------------


def test_single_linear_layer_by_hand():
    # out = w.x = 1*1 + 2*2 = 5, loss = out^2 = 25, dL/dw = 2*5*x = (10, 20)
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0]]))
    x = torch.tensor([[1.0, 2.0]])
    report = checkup.checkup(layer, (x, None), lambda out, _: (out**2).sum(), lr=0.1)
    (row,) = report.layers
    assert report.loss == pytest.approx(25.0)
    assert row["grad_norm"] == pytest.approx(math.sqrt(500.0))
    assert row["grad_ratio"] == pytest.approx(1.0)
    assert row["weight_norm"] == pytest.approx(math.sqrt(5.0))
    # std(0.1 * (10, 20)) / std((1, 2)) = 0.1 * 10
    assert row["update_ratio"] == pytest.approx(1.0)
    assert row["zero"] == 0.0 and row["subnormal"] == 0.0 and row["nonfinite"] == 0


def test_two_layer_ratio_by_hand():
    # out = b * a * x with a = 2, b = 3, x = 1: dL/da = b x = 3, dL/db = a x = 2, ratio first/last = 1.5
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        net[0].weight.fill_(2.0)
        net[1].weight.fill_(3.0)
    report = checkup.checkup(net, (torch.ones(1, 1), None), lambda out, _: out.sum())
    assert [r["grad_norm"] for r in report.layers] == pytest.approx([3.0, 2.0])
    assert report.layers[0]["grad_ratio"] == pytest.approx(1.5)


def test_tiny_gradients_do_not_underflow_in_the_norm():
    # dL/dw = 1e-25 * x: squaring 1e-25 underflows float32, a naive norm would say 0
    layer = nn.Linear(2, 1, bias=False)
    x = torch.tensor([[3.0, 4.0]])
    report = checkup.checkup(layer, (x, None), lambda out, _: 1e-25 * out.sum(), lr=1.0)
    assert report.layers[0]["grad_norm"] == pytest.approx(5e-25, rel=1e-5)
    assert report.layers[0]["update_ratio"] > 0
    assert not report.verdicts["vanishing"].found


def test_update_ratio_matches_probes(digits_batch):
    model = _mlp(depth=3, activation="relu", init="he")
    report = checkup.checkup(model, digits_batch, CE, lr=0.05)
    loss = CE(model(digits_batch[0]), digits_batch[1])
    loss.backward()
    # One SGD step against the weights, std(lr * g) / std(W), per weight matrix, by hand.
    expected = {n: float((0.05 * p.grad).double().std() / p.detach().double().std())
                for n, p in model.named_parameters() if p.dim() >= 2}
    got = {r["name"]: r["update_ratio"] for r in report.layers}
    assert got == pytest.approx(expected, rel=1e-5)
    norms = probes.grad_norms(model, *digits_batch, CE)
    assert {r["name"]: r["grad_norm"] for r in report.layers} == pytest.approx(norms, rel=1e-5)


def test_saturation_and_dead_shares_by_hand():
    # tanh inputs 0 and 10: tanh'(10) ~ 8e-9 < 0.1, so one of two entries is saturated.
    class Tanh(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1, 1))
            self.act = nn.Tanh()

        def forward(self, x):
            return self.act(x @ self.w)

    report = checkup.checkup(Tanh(), (torch.tensor([[0.0], [10.0]]), None), lambda o, _: o.sum())
    assert report.activations[0]["saturated"] == pytest.approx(0.5)
    # ReLU on inputs with one unit negative for both examples: half the units are dead
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    report = checkup.checkup(net, (x, None), lambda o, _: o.sum())
    assert report.activations[0]["dead"] == pytest.approx(0.5)


# ---- each verdict: a network built to have the symptom, and a healthy one ----------------------


def test_vanishing_deep_sigmoid_vs_he_relu(digits_batch):
    sick = checkup.checkup(_mlp(activation="sigmoid", init="xavier"), digits_batch, CE)
    well = checkup.checkup(_mlp(activation="relu", init="he"), digits_batch, CE)
    assert sick.verdicts["vanishing"].found and sick.layers[0]["grad_ratio"] < 1e-6
    assert not well.verdicts["vanishing"].found
    assert sick.verdicts["vanishing"].fixes[0][1] == "05_activations"


def test_vanishing_in_time_rnn_vs_lstm():
    x, y = data.first_input_recall(64, 30, seed=0)
    vg.seed(0)
    sick = checkup.checkup(recurrent.rnn(cell="rnn", input_size=4, hidden_size=32, output_size=4), (x, y), CE)
    vg.seed(0)
    lstm = recurrent.rnn(cell="lstm", input_size=4, hidden_size=32, output_size=4, forget_bias=3.0)
    well = checkup.checkup(lstm, (x, y), CE)
    assert len(sick.time_profile) == 31
    assert sick.verdicts["vanishing"].found and sick.verdicts["vanishing"].chapter == "09_lstm"
    assert not well.verdicts["vanishing"].found


def test_exploding_large_init_vs_xavier(digits_batch):
    sick = checkup.checkup(_mlp(activation="tanh", init=_scaled_normal(4.0)), digits_batch, CE, lr=0.1)
    well = checkup.checkup(_mlp(activation="tanh", init="xavier"), digits_batch, CE, lr=0.1)
    assert sick.verdicts["exploding"].found
    assert not well.verdicts["exploding"].found


def test_exploding_forward_growth_seen_by_update_ratio(digits_batch):
    # ReLU weights 1.8x too large: gradient ratios stay near 1, but the step is far larger than the weights.
    sick = checkup.checkup(_mlp(activation="relu", init=_scaled_normal(2.5)), digits_batch, CE, lr=0.1)
    assert max(r["grad_ratio"] for r in sick.layers) < 1e2
    assert sick.verdicts["exploding"].found


def test_saturation_large_tanh_vs_xavier(digits_batch):
    sick = checkup.checkup(_mlp(activation="tanh", init=_scaled_normal(4.0)), digits_batch, CE)
    well = checkup.checkup(_mlp(activation="tanh", init="xavier"), digits_batch, CE)
    assert sick.verdicts["saturation"].found
    assert not well.verdicts["saturation"].found
    assert checkup.checkup(_mlp(activation="relu"), digits_batch, CE).verdicts["saturation"].found is None


def test_dead_negative_bias_vs_batchnorm(digits_batch):
    sick = _mlp(depth=6, activation="relu", init="he")
    with torch.no_grad():
        for block in sick.blocks:
            block.linear.bias.fill_(-1.5)
    report = checkup.checkup(sick, digits_batch, CE)
    well = checkup.checkup(_mlp(activation="relu", init="he", norm="batch"), digits_batch, CE)
    assert report.verdicts["dead"].found
    assert report.verdicts["vanishing"].found  # everything below a fully dead layer gets zero gradient
    assert not well.verdicts["dead"].found


def test_underflow_float16_vs_loss_scaling_and_bfloat16(digits_batch):
    x, y = digits_batch
    sick = checkup.checkup(_mlp(activation="relu", init="he").half(), (x.half(), y), CE)
    scaled = checkup.checkup(_mlp(activation="relu", init="he").half(), (x.half(), y), CE, loss_scale=1024.0)
    bf16 = checkup.checkup(_mlp(activation="relu", init="he").bfloat16(), (x.bfloat16(), y), CE)
    assert sick.dtype == "float16" and sick.verdicts["underflow"].found
    assert not scaled.verdicts["underflow"].found
    assert not bf16.verdicts["underflow"].found
    # loss scaling does not change the (unscaled) gradient the report shows
    assert scaled.layers[-1]["grad_norm"] == pytest.approx(sick.layers[-1]["grad_norm"], rel=1e-2)


def test_nonfinite_overflow_vs_finite(digits_batch):
    x, y = digits_batch
    sick = checkup.checkup(_mlp(activation="relu", init="he").half(), (x.half(), y), CE, loss_scale=2.0**16)
    well = checkup.checkup(_mlp(activation="relu", init="he"), digits_batch, CE)
    assert sick.verdicts["nonfinite"].found
    assert not well.verdicts["nonfinite"].found


def test_healthy_network_raises_no_alarm(digits_batch):
    report = checkup.checkup(_mlp(depth=6, activation="relu", init="he"), digits_batch, CE, lr=0.1)
    assert report.healthy and report.found == []


# ---- generality: architectures, dtypes, devices ------------------------------------------------


def test_convolutional_network():
    vg.seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    report = checkup.checkup(net, (x, y), CE)
    assert [r["name"] for r in report.layers] == ["0.weight", "2.weight", "5.weight"]
    assert len(report.activations) == 2 and report.activations[0]["dead"] is not None


def test_transformer_block_with_tuple_and_dict_inputs():
    vg.seed(0)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(12, 16)
            self.block = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, activation=nn.GELU(), batch_first=True)
            self.head = nn.Linear(16, 12)

        def forward(self, tokens, scale=1.0):
            return self.head(self.block(self.embed(tokens) * scale).mean(dim=1))

    tokens, y = torch.randint(0, 12, (8, 5)), torch.randint(0, 12, (8,))
    model = Tiny().train()
    a = checkup.checkup(model, ((tokens,), y), CE)
    b = checkup.checkup(model, ({"tokens": tokens, "scale": 1.0}, y), CE)
    assert str(a) == str(b)  # same dropout masks: the checkup forks the RNG
    assert a.time_profile is None and any(r["name"] == "embed.weight" for r in a.layers)
    assert not a.verdicts["vanishing"].found


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes_on_cpu(dtype):
    vg.seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)
    report = checkup.checkup(net, (torch.randn(4, 8, dtype=dtype), torch.tensor([0, 1, 2, 0])), CE)
    assert report.dtype == str(dtype).replace("torch.", "")
    assert ("flushed" in report.layers[0]) == (dtype != torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda(dtype, digits_batch):
    x, y = digits_batch
    net = _mlp(activation="relu", init="he").to("cuda", dtype)
    report = checkup.checkup(net, (x.to("cuda", dtype), y.cuda()), CE)
    assert report.verdicts["nonfinite"].found is False
    assert next(net.parameters()).device.type == "cuda"


# ---- the model comes back exactly as it went in ------------------------------------------------


def test_model_state_is_restored(digits_batch):
    x, y = digits_batch
    vg.seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
    model.train()
    model[1].eval()  # a mixed mode, as in fine-tuning with frozen statistics
    model[1].train()
    model[3].eval()
    CE(model(x), y).backward()  # the user's own gradients
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    grad_ids = {n: id(p.grad) for n, p in model.named_parameters()}
    calls = []
    model[0].register_forward_hook(lambda *a: calls.append(1))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    modes = [m.training for m in model.modules()]
    hooks = [(dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks)) for m in model.modules()]
    rng = torch.get_rng_state()

    checkup.checkup(model, (x, y), CE, train=True, steps=3, lr=0.5)

    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert all(torch.equal(p.grad, grads[n]) and id(p.grad) == grad_ids[n] for n, p in model.named_parameters())
    assert [m.training for m in model.modules()] == modes
    assert [(dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
            for m in model.modules()] == hooks
    assert torch.equal(torch.get_rng_state(), rng)
    assert calls  # the user's hook did run during the checkup's forward pass


def test_steps_train_a_copy(digits_batch):
    model = _mlp(depth=3, activation="relu", init="he")
    before = [p.detach().clone() for p in model.parameters()]
    report = checkup.checkup(model, digits_batch, CE, lr=0.1, steps=5)
    assert len(report.losses) == 6 and report.losses[-1] < report.losses[0]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert "after 5 SGD steps" in str(report)


# ---- outputs --------------------------------------------------------------------------------------


def test_outputs_text_html_dict_plot(digits_batch):
    model = _mlp(depth=4, activation="sigmoid", init="xavier")
    a = checkup.checkup(model, digits_batch, CE)
    b = checkup.checkup(model, digits_batch, CE)
    assert str(a) == str(b) == repr(a)
    assert "vanishing" in a.summary() and "layer" in str(a)
    html = a._repr_html_()
    assert html.count("<table>") == 3 and "FOUND" in html or "ok" in html
    d = a.to_dict()
    json.dumps(d)  # plain data only
    assert set(d["verdicts"]) == set(checkup.SYMPTOMS)
    assert d["layers"][0]["name"] == "blocks.0.linear.weight"
    ax = a.plot()
    assert ax.get_yscale() == "log"
    import matplotlib.pyplot as plt

    plt.close("all")


def test_low_precision_floor():
    assert checkup.low_precision_floor(torch.float16) == pytest.approx(6.103515625e-05)
    assert checkup.low_precision_floor(torch.bfloat16) == pytest.approx(1.1754943508222875e-38)
    with pytest.raises(ValueError, match="floating-point"):
        checkup.low_precision_floor(torch.int32)


# ---- errors -------------------------------------------------------------------------------------


def test_errors(digits_batch):
    model = _mlp(depth=2)
    with pytest.raises(ValueError, match="no parameters"):
        checkup.checkup(nn.ReLU(), digits_batch, CE)
    with pytest.raises(ValueError, match="torch.nn.Module"):
        checkup.checkup("model", digits_batch, CE)
    with pytest.raises(ValueError, match="batch does not fit"):
        checkup.checkup(model, (torch.randn(4, 3), torch.zeros(4, dtype=torch.long)), CE)
    with pytest.raises(ValueError, match="scalar"):
        checkup.checkup(model, digits_batch, lambda o, t: CE(o, t, reduction="none"))
    with pytest.raises(ValueError, match="loss_fn failed"):
        checkup.checkup(model, (digits_batch[0], torch.zeros(3)), CE)
    with pytest.raises(ValueError, match="pair"):
        checkup.checkup(model, digits_batch[0], CE)
    with pytest.raises(ValueError, match="loss_fn must be callable"):
        checkup.checkup(model, digits_batch, "cross_entropy")
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="lr must be"):
            checkup.checkup(model, digits_batch, CE, lr=bad)
    with pytest.raises(ValueError, match="steps must be"):
        checkup.checkup(model, digits_batch, CE, steps=-1)
    with pytest.raises(ValueError, match="train must be"):
        checkup.checkup(model, digits_batch, CE, train="yes")
    with pytest.raises(ValueError, match="time_dim"):
        checkup.checkup(model, digits_batch, CE, time_dim=5)
    with pytest.raises(ValueError, match="loss_scale"):
        checkup.checkup(model, digits_batch, CE, loss_scale=0)
    with pytest.raises(ValueError, match="unknown key"):
        checkup.checkup(model, digits_batch, CE, thresholds={"vanish": 1e-3})
    with pytest.raises(ValueError, match="positive number"):
        checkup.checkup(model, digits_batch, CE, thresholds={"vanishing_ratio": -1})
    with pytest.raises(ValueError, match="smaller than"):
        checkup.checkup(model, digits_batch, CE, thresholds={"vanishing_ratio": 1e3})
    frozen = _mlp(depth=2).requires_grad_(False)
    with pytest.raises(ValueError, match="require grad"):
        checkup.checkup(frozen, digits_batch, CE)
    with pytest.raises(ValueError, match="does not depend"):
        checkup.checkup(model, digits_batch, lambda o, t: torch.tensor(1.0))
