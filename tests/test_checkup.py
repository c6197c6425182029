"""Tests of vanishing.checkup: hand-computed numbers, one broken and one healthy net per verdict, errors."""

from __future__ import annotations

import copy
import json
import math

import matplotlib
import pytest
import torch
from torch import nn

import vanishing as vg
from vanishing import checkup, data, models, monitor, probes, recurrent

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
    assert report.forward_ratio is None  # one layer: no hidden input to compare the read-out's with
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
    # errors from the user's model and loss come through as raised, with a note where they arose
    with pytest.raises(ValueError, match="input must have shape") as err:
        checkup.checkup(model, (torch.randn(4, 3), torch.zeros(4, dtype=torch.long)), CE)
    assert "forward pass" in " ".join(err.value.__notes__)
    with pytest.raises(ValueError, match="scalar"):
        checkup.checkup(model, digits_batch, lambda o, t: CE(o, t, reduction="none"))
    with pytest.raises(ValueError, match="batch_size") as err:  # torch's own error, unchanged
        checkup.checkup(model, (digits_batch[0], torch.zeros(3)), CE)
    assert "loss_fn" in " ".join(err.value.__notes__)
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


# ---- checkup v2 regressions (issue 19): real-model structures that crashed or were misjudged ----


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


class _Block(nn.Module):
    """A torchvision-style basic block: conv-bn-ReLU(inplace)-conv-bn, identity shortcut."""

    def __init__(self, c: int, zero_last_gamma: bool = False):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        if zero_last_gamma:  # timm's and Goyal et al.'s zero-initialized residual branch
            nn.init.zeros_(self.bn2.weight)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


def _resnet(zero_last_gamma: bool = False) -> nn.Module:
    vg.seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        _Block(16, zero_last_gamma), _Block(16, zero_last_gamma),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return net


@pytest.fixture(scope="module")
def image_batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 3, 12, 12, generator=g), torch.randint(0, 10, (16,), generator=g)


@pytest.mark.parametrize("zero_last_gamma", [False, True])
def test_inplace_relu_resnet_runs_restores_and_reads_healthy(image_batch, zero_last_gamma):
    # nn.ReLU(inplace=True) crashed the recorder; a zero-initialized residual branch read
    # "vanishing, add residual connections"
    model = _resnet(zero_last_gamma)
    before = _state(model)
    report = checkup.checkup(model, image_batch, CE, train=True)
    assert _same_state(model, before)
    assert report.healthy, report.summary()
    relus = [a for a in report.activations if a["kind"] == "ReLU"]
    assert len(relus) == 5 and all(0 <= a["dead"] < 0.5 for a in relus)
    if zero_last_gamma:
        assert "near zero (first: 3.bn2.weight)" in report.verdicts["vanishing"].evidence


def test_sparse_embedding_gradient_is_measured():
    vg.seed(0)
    emb = nn.Embedding(50, 8, sparse=True)
    model = nn.Sequential(emb, nn.Flatten(), nn.Linear(8 * 5, 3))
    x = torch.randint(0, 50, (32, 5), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(2))
    report = checkup.checkup(model, (x, y), CE)
    dense = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(8 * 5, 3))
    dense.load_state_dict(model.state_dict())
    row = report.layers[0]
    assert row["name"] == "0.weight"
    expected = checkup.checkup(dense, (x, y), CE).layers[0]["grad_norm"]
    assert row["grad_norm"] == pytest.approx(expected)


class _LateStem(nn.Module):
    """The input layer registered after the body: parameter order is not the forward order."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 10))
        self.stem = nn.Linear(64, 32)

    def forward(self, x):
        return self.body(torch.tanh(self.stem(x)))


def test_layers_are_listed_in_forward_order(digits_batch):
    vg.seed(0)
    report = checkup.checkup(_LateStem(), digits_batch, CE)
    assert [r["name"] for r in report.layers] == ["stem.weight", "body.0.weight", "body.2.weight"]
    assert report.layers[-1]["grad_ratio"] == 1.0  # the ratio is to the layer nearest the output


class _LoRA(nn.Module):
    """A frozen linear layer plus a low-rank adapter whose B starts at zero (Hu et al. 2021)."""

    def __init__(self, d_in: int, d_out: int, rank: int = 4):
        super().__init__()
        self.base = nn.Linear(d_in, d_out)
        self.base.requires_grad_(False)
        self.A = nn.Linear(d_in, rank, bias=False)
        self.B = nn.Linear(rank, d_out, bias=False)
        nn.init.zeros_(self.B.weight)

    def forward(self, x):
        return self.base(x) + self.B(self.A(x))


def test_zero_initialized_adapters_and_heads_are_not_alarms(digits_batch):
    # LoRA (B = 0) read "vanishing and exploding (update ratio 1e25)"; so did a zero-initialized head
    vg.seed(0)
    lora = nn.Sequential(_LoRA(64, 64), nn.ReLU(), _LoRA(64, 10))
    head = _mlp(depth=3, activation="relu", init="he")
    nn.init.zeros_(head.head.weight)
    for model in (lora, head):
        report = checkup.checkup(model, digits_batch, CE)
        # nothing else moves on the first step, but the zero-initialized parameter itself does:
        # not stalled
        assert report.healthy, report.summary()
        assert "start at or near zero move on this step" in report.verdicts["stalled"].evidence
        zero = [r for r in report.layers if r["zero_init"]]
        assert zero and all(r["update_ratio"] is None for r in zero)
    # the same all-zero gradients without a zero-initialized parameter are still vanishing
    dead = _mlp(depth=3, activation="relu", init="he")
    with torch.no_grad():
        dead.blocks[-1].linear.bias.fill_(-100.0)  # every unit of the last hidden layer is off
    assert checkup.checkup(dead, digits_batch, CE).verdicts["vanishing"].found


def test_dead_units_are_not_judged_on_a_batch_of_one(digits_batch):
    model = _mlp(depth=5, activation="relu", init="he")
    x, y = digits_batch
    one = checkup.checkup(model, (x[:1], y[:1]), CE).verdicts["dead"]
    assert one.found is None and "only 1 times" in one.evidence
    assert checkup.checkup(model, digits_batch, CE).verdicts["dead"].found is False


def test_user_gradient_hooks_do_not_fire(digits_batch):
    # a logger's hooks (what wandb.watch installs) must not see the checkup's gradients
    model = _mlp(depth=3)
    seen = []
    for p in model.parameters():
        p.register_hook(lambda g: seen.append(1))
    checkup.checkup(model, digits_batch, CE)
    assert seen == []
    CE(model(digits_batch[0]), digits_batch[1]).backward()  # and they are back afterwards
    assert len(seen) == len(list(model.parameters()))


def test_fixes_leave_out_what_the_model_already_has(digits_batch):
    vg.seed(0)
    bn = nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 10))
    verdict = checkup.checkup(bn, digits_batch, CE, lr=1e3).verdicts["exploding"]
    assert verdict.found
    fixes = [f for f, _ in verdict.fixes]
    assert fixes and not any(f.startswith(("shrink", "normalize")) for f in fixes)
    plain = checkup.checkup(_mlp(depth=3), digits_batch, CE, lr=1e3).verdicts["exploding"]
    assert any(f.startswith("shrink") for f, _ in plain.fixes)


@pytest.mark.parametrize("activation,init,depth,biases", [
    ("relu", "xavier", 50, True), ("gelu", "xavier", 50, True), ("relu", "default", 20, False),
])
def test_flat_but_tiny_is_found_through_the_forward_signal(digits_batch, activation, init, depth,
                                                           biases):
    # forward and backward both shrink, so the gradient ratios stay near 1: v1 called these healthy
    model = _mlp(depth=depth, activation=activation, init=init)
    if not biases:
        for block in model.blocks:
            nn.init.zeros_(block.linear.bias)
    report = checkup.checkup(model, digits_batch, CE)
    ratios = [r["grad_ratio"] for r in report.layers]
    assert min(ratios) > 1e-2  # the gradient profile alone looks fine
    v = report.verdicts["vanishing"]
    assert v.found and "forward signal" in v.evidence
    assert v.fixes[0][1] == "06_initialization"
    rows = report.layers
    assert report.forward_ratio == rows[-1]["input_rms"] / max(r["input_rms"] for r in rows[1:-1])
    assert report.to_dict()["forward_ratio"] == report.forward_ratio  # for loggers
    assert report.forward_ratio < 1e-2


def test_he_relu_forward_signal_is_healthy(digits_batch):
    report = checkup.checkup(_mlp(depth=50, activation="relu", init="he"), digits_batch, CE)
    assert not report.verdicts["vanishing"].found, report.summary()


def test_initial_loss_is_compared_with_a_uniform_guess(digits_batch):
    report = checkup.checkup(_mlp(depth=3, activation="relu", init="he"), digits_batch, CE)
    assert report.classes == 10 and report.to_dict()["classes"] == 10
    assert f"times ln 10 = {math.log(10):.3g}" in str(report)
    # regression, or targets that are not class indices: no comparison
    x = torch.randn(8, 64)
    regression = checkup.checkup(_mlp(depth=2), (x, torch.randn(8, 10)), nn.functional.mse_loss)
    assert regression.classes is None and "times ln" not in str(regression)


class _Offset(nn.Module):
    """A network with a zero-initialized parameter that gates nothing: a learned input offset."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(64))
        self.body = body

    def forward(self, x):
        return self.body(x + self.offset)


def test_a_zero_parameter_excuses_only_the_layers_it_gates(digits_batch):
    # review finding: one zero parameter anywhere used to excuse every all-zero gradient
    dead = _mlp(depth=3, activation="relu", init="he")
    with torch.no_grad():
        dead.blocks[-1].linear.bias.fill_(-100.0)
    report = checkup.checkup(_Offset(dead), digits_batch, CE)
    assert report.verdicts["vanishing"].found, report.summary()
    assert "behind a parameter" not in report.verdicts["vanishing"].evidence


class _TinyViT(nn.Module):
    """A pre-LN vision transformer in the timm style: patch embedding, class token and position
    embedding held by the model itself, encoder, final LayerNorm, head."""

    def __init__(self, d: int = 32, blocks: int = 4):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, stride=4)
        self.cls_token = nn.Parameter(1e-6 * torch.randn(1, 1, d))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 10, d))
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, activation=nn.GELU(),
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.encoder(tokens))[:, 0])


def test_raw_input_scale_does_not_decide_the_forward_verdict(image_batch):
    # review finding: a healthy ViT on raw 0-255 pixels read "vanishing" (the reference layer saw
    # the data), as did an RNN whose inputs were scaled up
    vg.seed(0)
    vit = _TinyViT()
    pixels = 255 * torch.rand(16, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    report = checkup.checkup(vit, (pixels, image_batch[1]), CE)
    assert not report.verdicts["vanishing"].found and not report.verdicts["exploding"].found, (
        report.summary())
    assert all(r["update_ratio"] is None for r in report.layers if r["name"] == "cls_token")
    vg.seed(0)
    rnn = recurrent.rnn(cell="lstm", input_size=4, hidden_size=16, output_size=4)
    x = 100 * torch.randn(32, 5, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 4, (32,), generator=torch.Generator().manual_seed(1))
    evidence = checkup.checkup(rnn, (x, y), CE).verdicts["vanishing"].evidence
    assert "forward signal" not in evidence  # the core sees the raw input; only the head remains


class _TokenRNN(nn.Module):
    """Token ids -> embedding -> a time-major RNN (batch_first=False) -> read-out of the last step.
    The model's input is integers, and the core sees (time, batch, features)."""

    def __init__(self, cell: str = "rnn"):
        super().__init__()
        self.embed = nn.Embedding(4, 8)
        self.core = (nn.RNN if cell == "rnn" else nn.LSTM)(8, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, tokens):
        states, _ = self.core(self.embed(tokens).transpose(0, 1))
        return self.head(states[-1])


def test_time_profile_is_taken_at_the_cores_own_input():
    # review of v1: an nn.Embedding -> LSTM got no time profile (only float inputs were profiled),
    # and a wrapper that transposes (batch, time) would have profiled the batch axis
    x, y = data.first_input_recall(64, 30, seed=0)
    tokens = x.argmax(dim=-1)  # (batch 64, time 31) integers
    vg.seed(0)
    report = checkup.checkup(_TokenRNN(), (tokens, y), CE)
    assert report.time_profile is not None and len(report.time_profile) == 31
    assert report.verdicts["vanishing"].found and report.verdicts["vanishing"].chapter == "09_lstm"
    # on float inputs fed straight to the core, the same profile as an explicit input gradient
    vg.seed(0)
    model = recurrent.rnn(cell="rnn", input_size=4, hidden_size=32, output_size=4)
    auto = checkup.checkup(model, (x, y), CE).time_profile
    explicit = checkup.checkup(model, (x, y), CE, time_dim=1).time_profile
    assert auto == pytest.approx(explicit, rel=1e-6)


def test_a_zero_head_leaves_vanishing_unjudged_not_healthy(digits_batch):
    # review: a zero head excused the whole network, so patient one (ratio 1e-12) read healthy
    model = _mlp(activation="sigmoid", init="xavier")
    nn.init.zeros_(model.head.weight)
    v = checkup.checkup(model, digits_batch, CE).verdicts["vanishing"]
    assert v.found is None and "cannot be judged at initialization" in v.evidence


class _ScaledBlock(nn.Module):
    """A block holding its own layer scale (CaiT, ReZero): x + gamma * f(x)."""

    def __init__(self, width: int, gamma: float):
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.gamma = nn.Parameter(torch.full((width,), gamma))

    def forward(self, x):
        return x + self.gamma * torch.relu(self.linear(x))


def test_a_blocks_own_layer_scale_excuses_only_that_block(digits_batch):
    # review: a layer scale held by a block excused every block before it
    vg.seed(0)
    sick = nn.Sequential(nn.Linear(64, 64), *[nn.Sequential(nn.Linear(64, 64), nn.Sigmoid())
                                              for _ in range(15)],
                         _ScaledBlock(64, 1e-6), _ScaledBlock(64, 1e-6), nn.Linear(64, 10))
    report = checkup.checkup(sick, digits_batch, CE)
    assert report.verdicts["vanishing"].found, report.summary()
    assert "behind a gate" in report.verdicts["vanishing"].evidence  # the scaled blocks, excused


def test_a_near_zero_head_gets_no_update_ratio(digits_batch):
    # review: a head at std 2e-5 was a gate for the vanishing rule but "exploding" for the update rule
    model = _mlp(depth=3, activation="relu", init="he")
    nn.init.normal_(model.head.weight, 0.0, 2e-5)
    report = checkup.checkup(model, digits_batch, CE, lr=0.1)
    assert report.layers[-1]["update_ratio"] is None
    assert not report.verdicts["exploding"].found, report.summary()


class _GeluByHand(nn.Module):
    """A plain network with GPT-2's tanh GELU written out: x + 0.044715 x^3 is an addition of a
    tensor to a function of itself with no weight on either path, not a skip connection."""

    def __init__(self, shortcut: str | None = None):
        super().__init__()
        self.inp, self.a, self.b, self.head = (nn.Linear(8, 16), nn.Linear(16, 16),
                                               nn.Linear(16, 16), nn.Linear(16, 3))
        self.proj, self.shortcut = nn.Linear(16, 16), shortcut

    def forward(self, x):
        h = self.inp(x)
        h = 0.5 * h * (1 + torch.tanh(0.79788456 * (h + 0.044715 * torch.pow(h, 3))))
        branch = self.b(torch.relu(self.a(h)))
        if self.shortcut == "identity":
            branch = branch + h
        elif self.shortcut == "projection":
            branch = branch + self.proj(h)
        elif self.shortcut == "parallel":  # two one-weight paths: a sum, not a shortcut
            branch = self.a(h) + self.proj(h)
        return self.head(branch)


@pytest.mark.parametrize("model, skip", [
    (lambda: _mlp(residual=True), True),
    (lambda: _mlp(), False),
    (lambda: _GeluByHand(), False),
    (lambda: _GeluByHand("identity"), True),
    (lambda: _GeluByHand("projection"), True),
    (lambda: _GeluByHand("parallel"), False),
])
def test_skip_connections_are_read_from_the_graph(model, skip):
    net = model()
    x = torch.randn(4, net.inp.in_features if hasattr(net, "inp") else 64)
    assert checkup._skip_connection(net(x)) is skip


def test_a_residual_network_is_not_told_to_add_residual_connections(digits_batch):
    # review (issue 19): "add residual connections" was proposed to ResNets; a residual network
    # that explodes is told to scale its branches instead
    assert checkup._skip_connection(_resnet()(torch.randn(2, 3, 8, 8)))
    report = checkup.checkup(_mlp(depth=30, activation="relu", init="he", residual=True),
                             digits_batch, CE)
    v = report.verdicts["exploding"]
    assert v.found and v.fixes[0] == (checkup._BRANCH_SCALE, "08_residual"), v.fixes
    fixes = checkup._fixes("vanishing", has={"residual": True}, saturating=False, in_time=False)
    assert fixes and not any("residual" in f for f, _ in fixes)


def test_patient_two_gets_the_initialization_first(digits_batch):
    v = checkup.checkup(_mlp(activation="relu"), digits_batch, CE).verdicts["vanishing"]
    assert v.found and [c for _, c in v.fixes] == [
        "06_initialization", "07_normalization", "08_residual"]


# ---- checkpointing and torch.compile ----------------------------------------------------------


class _Checkpointed(nn.Module):
    """Six tanh blocks under torch.utils.checkpoint, then a head (``reentrant`` picks the form)."""

    def __init__(self, reentrant: bool | None):
        super().__init__()
        vg.seed(0)
        self.reentrant = reentrant
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(64 if i == 0 else 32, 32), nn.Tanh())
                                    for i in range(6))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        for block in self.blocks:
            x = (block(x) if self.reentrant is None else
                 torch.utils.checkpoint.checkpoint(block, x, use_reentrant=self.reentrant))
        return self.head(x)


def test_non_reentrant_checkpointing_reads_as_the_plain_model(digits_batch):
    # the recomputation during backward must neither fail (the activation measurement's own
    # autograd is hidden from the checkpoint) nor be recorded a second time
    plain = checkup.checkup(_Checkpointed(None), digits_batch, CE)
    ckpt = checkup.checkup(_Checkpointed(False), digits_batch, CE)
    assert ckpt.summary() == plain.summary()
    assert len(ckpt.activations) == len(plain.activations) == 6


def test_a_graph_cut_by_reentrant_checkpointing_is_found(digits_batch):
    # the reentrant form gives no gradient to blocks whose input does not require grad: the first
    # six weight matrices ran but get none, which a ratio of the gradients that exist cannot show
    model = _Checkpointed(True)
    with pytest.warns(UserWarning, match="requires_grad"):
        v = checkup.checkup(model, digits_batch, CE).verdicts["vanishing"]
    assert v.found and "does not reach the first 6 of 7" in v.evidence
    assert v.fixes[0][0].startswith("reconnect the graph") and len(v.fixes) == 1
    # the monitor reads the same cut from the live .grad
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="requires_grad"), monitor.Monitor(
            model, opt, every=1) as watch:
        opt.zero_grad()
        CE(model(digits_batch[0]), digits_batch[1]).backward()
        opt.step()
    assert watch.found == ["vanishing"]


def test_a_compiled_model_is_measured_through_the_module_it_wraps(digits_batch):
    net = _mlp(depth=4, activation="relu", init="he")
    eager = checkup.checkup(net, digits_batch, CE)
    compiled = torch.compile(net, backend="eager")  # dynamo traces; no C++ compiler needed
    report = checkup.checkup(compiled, digits_batch, CE)
    assert report.summary() == eager.summary()
    assert [r["name"] for r in report.layers] == [r["name"] for r in eager.layers]
    # the monitor's forward hooks run eagerly inside the compiled forward
    opt = torch.optim.SGD(compiled.parameters(), lr=0.1)
    with monitor.Monitor(compiled, opt, every=1) as watch:
        opt.zero_grad()
        CE(compiled(digits_batch[0]), digits_batch[1]).backward()
        opt.step()
    rows = watch.history[0]["layers"]
    assert [r["name"] for r in rows] == [r["name"] for r in eager.layers]
    assert all(r["input_rms"] is not None for r in rows[1:])


# ---- the user's optimizer, and the stalled verdict ------------------------------------------


def test_update_ratios_are_the_step_of_a_copy_of_the_users_adam(digits_batch):
    net = _mlp(depth=6, activation="relu", init="he")
    state = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    fired = []
    opt.register_step_post_hook(lambda *a: fired.append(1))
    report = checkup.checkup(net, digits_batch, CE, optimizer=opt, steps=2)
    # Adam's first step is lr * g / (|g| + eps) (bias corrections cancel), about lr * sign(g):
    # its size does not follow the gradient's
    ref = copy.deepcopy(net)
    CE(ref(digits_batch[0]), digits_batch[1]).backward()
    for row in report.layers:
        p = dict(ref.named_parameters())[row["name"]]
        step = 1e-3 * p.grad.double() / (p.grad.double().abs() + 1e-8)
        assert row["update_ratio"] == pytest.approx(
            float(step.std() / p.detach().double().std()), rel=1e-3)
    assert report.optimizer == "Adam" and report.lr == 1e-3
    assert "Adam lr 0.001, loss after 2 Adam steps" in str(report)
    assert report.losses[-1] < report.losses[0]  # the copy trained
    # the original is not stepped: its state, its hooks and the model are as they were
    assert opt.state == {} and not fired
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_stalled_plain_sgd_and_adam(digits_batch):
    # the same gradients: SGD at 1e-7 hardly moves the weights; Adam at 1e-7 does not either;
    # Adam at 1e-3 takes steps of its own size however small the gradient
    net = _mlp(depth=6, activation="relu", init="he")
    sgd = checkup.checkup(net, digits_batch, CE, lr=1e-7).verdicts["stalled"]
    assert sgd.found and sgd.fixes[0][0].startswith("raise the learning rate")
    assert sgd.fixes[0][1] == "13_checkup"  # where the update/weight range of trainable networks is
    assert any(f[0].startswith("use an optimizer") for f in sgd.fixes)
    slow = checkup.checkup(net, digits_batch, CE,
                           optimizer=torch.optim.Adam(net.parameters(), lr=1e-7)).verdicts
    assert slow["stalled"].found
    assert not any(f[0].startswith("use an optimizer") for f in slow["stalled"].fixes)
    adam = checkup.checkup(net, digits_batch, CE,
                           optimizer=torch.optim.Adam(net.parameters(), lr=1e-3)).verdicts
    assert adam["stalled"].found is False
    assert checkup.checkup(net, digits_batch, CE, lr=0.1).verdicts["stalled"].found is False


def test_optimizer_errors(digits_batch):
    net = _mlp(depth=3)
    with pytest.raises(ValueError, match="optimizer must be a torch.optim.Optimizer"):
        checkup.checkup(net, digits_batch, CE, optimizer="adam")
    other = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer holds none of the model's parameters"):
        checkup.checkup(net, digits_batch, CE, optimizer=other)


# ---- judged on the structure of the depth profile -------------------------------------------


def test_depth_profile_is_judged_by_its_trend_not_by_one_matrix():
    # the neighbours' median removes runs of one or two matrices out of line, keeps runs of three
    assert checkup._neighbour_median([1, 1e-4, 1, 1, 1]) == [1, 1, 1, 1, 1]
    assert checkup._neighbour_median([1, 1e-4, 1e-4, 1, 1, 1]) == [1, 1, 1, 1, 1, 1]
    assert min(checkup._neighbour_median([1e-4, 1e-4, 1e-4, 1, 1, 1])) == 1e-4
    # the typical factor per matrix toward the input: exactly 1/2 on a geometric profile, and
    # still 1/2 with one layer far out of line
    profile = [2.0 ** -(9 - i) for i in range(10)]
    assert checkup._trend(profile) == pytest.approx(0.5)
    profile[4] = 1e-9
    assert checkup._trend(profile) == pytest.approx(0.5)


def _judge_profile(ratios: list[float]) -> checkup.Verdict:
    """The vanishing verdict on a depth profile of layer/last gradient ratios (forward order)."""
    rows = [{"name": f"{i}.weight", "shape": [8, 8], "grad_norm": r, "grad_ratio": r,
             "update_ratio": 1e-2, "weight_norm": 1.0, "input_rms": None, "nonfinite": 0,
             "subnormal": 0.0, "zero": 0.0, "ran": True} for i, r in enumerate(ratios)]
    return checkup._judge(rows, [], None, 1.0, torch.float32, dict(checkup.THRESHOLDS), {}, {})[
        "vanishing"]


def test_one_or_two_matrices_out_of_line_are_not_a_vanishing_gradient():
    # a squeeze-excite branch's two matrices (or a pooler, an embedding) far below the layers
    # around them: reported, not judged vanishing; three in a row, or a geometric decay, are
    healthy = [1.0] * 12
    pair = healthy[:5] + [1e-4, 3e-4] + healthy[7:]
    v = _judge_profile(pair)
    assert v.found is False
    assert "not a trend: 5.weight at 1.00e-04" in v.evidence and "per weight matrix toward the input 1" in v.evidence
    assert _judge_profile(healthy[:5] + [1e-4] * 3 + healthy[8:]).found
    decay = _judge_profile([0.5 ** (11 - i) for i in range(12)])
    assert decay.found and "per weight matrix toward the input 0.5" in decay.evidence


def test_autocast_backward_signal_underflow_is_found_and_loss_scaling_removes_it(digits_batch):
    # a float32 model run under float16 autocast stores its backward signal in float16: with a
    # small loss (weighted by 1e-3, as a loss term can be) almost every entry of the signal at the
    # read-out's output is subnormal in float16, while the float32 weight gradients hold none;
    # scaling the loss by 2^14 lifts it out, and bfloat16 (float32's exponent range) never had
    # the problem
    class Autocast(nn.Module):
        def __init__(self, dtype):
            super().__init__()
            self.dtype, self.net = dtype, _mlp(depth=6, activation="relu", init="he")

        def forward(self, x):
            with torch.autocast("cpu", dtype=self.dtype):
                return self.net(x).float()

    def small(out, y):
        return 1e-3 * CE(out, y)

    half = checkup.checkup(Autocast(torch.float16), digits_batch, small)
    v = half.verdicts["underflow"]
    assert v.found and "in float16 (autocast): largest share of entries subnormal" in v.evidence
    assert v.fixes[0][0].startswith("scale the loss")
    assert all(r["out_dtype"] == "float16" for r in half.layers)
    assert max(r["subnormal"] for r in half.layers) == 0  # the float32 weight gradients alone
    scaled = checkup.checkup(Autocast(torch.float16), digits_batch, small, loss_scale=2.0**14)
    assert not scaled.verdicts["underflow"].found, scaled.summary()
    bf16 = checkup.checkup(Autocast(torch.bfloat16), digits_batch, small)
    assert not bf16.verdicts["underflow"].found, bf16.summary()


# ---- review 13c: regressions of the v2 rules ---------------------------------------------------


def test_a_short_steady_decay_is_vanishing(digits_batch):
    # the median of five blunts the input end of a short profile; the robust trend does not: a
    # PyTorch-default sigmoid network with five weight matrices loses ~5x per matrix
    net = _mlp(depth=4, activation="sigmoid", init="default")
    v = checkup.checkup(net, digits_batch, CE).verdicts["vanishing"]
    assert v.found and "over 5 matrices" in v.evidence, v.evidence
    decay = _judge_profile([3.2e-4, 3.8e-3, 0.15, 1.0])
    assert decay.found and "not a trend" not in decay.evidence


def test_autocast_zero_gates_and_dead_layers_are_not_underflow(digits_batch):
    # an all-zero backward signal at a low-precision output is no underflow: a zero-initialized
    # head gives one, and bfloat16 has float32's range
    class Autocast(nn.Module):
        def __init__(self, net, dtype):
            super().__init__()
            self.net, self.dtype = net, dtype

        def forward(self, x):
            with torch.autocast("cpu", dtype=self.dtype):
                return self.net(x).float()

    head = _mlp(depth=4, activation="relu", init="he")
    nn.init.zeros_(head.head.weight)
    for dtype in (torch.float16, torch.bfloat16):
        report = checkup.checkup(Autocast(head, dtype), digits_batch, CE)
        assert report.healthy, report.summary()


def test_checkup_inside_a_monitored_run(digits_batch):
    # the copies a checkup makes share the monitor's hooks, and the checkup's own passes are no
    # training steps: neither may reach the monitor
    model = _mlp(depth=3, activation="relu", init="he")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with monitor.Monitor(model, opt, every=1) as watch:
        checkup.checkup(model, digits_batch, CE, steps=2, optimizer=opt)
        assert watch._order == [] and watch._input_ms == {} and watch.history == []
        opt.zero_grad()
        CE(model(digits_batch[0]), digits_batch[1]).backward()
        opt.step()
    assert len(watch.history) == 1 and watch.history[0]["found"] == []


def test_reentrant_checkpointing_with_inputs_that_require_grad(digits_batch):
    # the Hugging Face layout: a stem outside, the blocks checkpointed in the reentrant form,
    # which refuses autograd.grad; the checkup falls back to backward() into stashed .grad fields
    class Layout(nn.Module):
        def __init__(self, reentrant: bool | None):
            super().__init__()
            vg.seed(0)
            self.reentrant = reentrant
            self.stem = nn.Linear(64, 32)
            self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(32, 32), nn.Tanh())
                                        for _ in range(4))
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            x = self.stem(x)
            for b in self.blocks:
                x = (b(x) if self.reentrant is None else
                     torch.utils.checkpoint.checkpoint(b, x, use_reentrant=self.reentrant))
            return self.head(x)

    model = Layout(True)
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)  # the user's accumulated gradients must survive
    report = checkup.checkup(model, digits_batch, CE)
    assert report.summary() == checkup.checkup(Layout(None), digits_batch, CE).summary()
    assert all(bool((p.grad == 7.0).all()) for p in model.parameters())


def test_the_monitor_leaves_out_layers_frozen_after_it_attached(digits_batch):
    # fine-tuning: the optimizer holds every parameter, the first layers are frozen afterwards;
    # their missing gradients are no cut graph
    model = _mlp(depth=4, activation="relu", init="he")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with monitor.Monitor(model, opt, every=1) as watch:
        for p in model.blocks[:2].parameters():
            p.requires_grad_(False)
        opt.zero_grad()
        CE(model(digits_batch[0]), digits_batch[1]).backward()
        opt.step()
    assert watch.found == [], watch.summary()
    assert [r["name"] for r in watch.history[0]["layers"]][0] == "blocks.2.linear.weight"


def test_one_tanh_among_rectifiers_is_not_blamed(digits_batch):
    # BERT's pooler: a single tanh in a GELU network; a vanishing gradient there is not the
    # tanh's doing, so "replace sigmoid/tanh" is not proposed
    vg.seed(0)
    net = nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(64, 64), nn.GELU())],
                        nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(0.3)  # a weak gain per layer: a real vanishing gradient
    v = checkup.checkup(net, digits_batch, CE).verdicts["vanishing"]
    assert v.found and not any(f[0].startswith("replace sigmoid/tanh") for f in v.fixes)
    sigmoid = checkup.checkup(_mlp(depth=10, activation="sigmoid", init="xavier"), digits_batch, CE)
    assert sigmoid.verdicts["vanishing"].fixes[0][0].startswith("replace sigmoid/tanh")


def test_closure_optimizers_are_refused_by_the_checkup(digits_batch):
    net = _mlp(depth=2)
    with pytest.raises(ValueError, match="optimizer: LBFGS"):
        checkup.checkup(net, digits_batch, CE, optimizer=torch.optim.LBFGS(net.parameters()))
