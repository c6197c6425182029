"""The measurement core, vanishing.probes.signals: forward and backward signal per layer, against hand
computations, on models that stress the hooks, and with exact restoration of the model."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vanishing import probes


def _two_layer() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    return net, torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])


def test_signals_match_a_hand_computation_on_a_two_layer_network():
    net, x, y = _two_layer()
    first, act, second = net
    # By hand: z1 = W1 x + b1, h1 = tanh(z1), z2 = W2 h1 + b2; delta = dL/dz at each layer's output.
    z1 = x @ first.weight.T + first.bias
    h1 = torch.tanh(z1)
    z2 = h1 @ second.weight.T + second.bias
    p = torch.softmax(z2, dim=1)
    delta2 = (p - F.one_hot(y, 2).float()) / len(y)  # cross-entropy, mean over the batch
    delta1 = (delta2 @ second.weight) * (1 - h1**2)
    grad_w2, grad_w1 = delta2.T @ h1, delta1.T @ x  # dL/dW = delta h^T, summed over the batch
    rows = probes.signals(net, x, y, F.cross_entropy)
    assert [r.name for r in rows] == ["0", "1", "2"] and [r.kind for r in rows] == ["Linear", "Tanh", "Linear"]
    s1, sa, s2 = rows
    rms = lambda t: float(t.detach().double().pow(2).mean().sqrt())  # noqa: E731
    assert s1.input_rms == pytest.approx(rms(x), rel=1e-6)
    assert s2.input_rms == pytest.approx(rms(h1), rel=1e-6) and sa.output_rms == pytest.approx(rms(h1), rel=1e-6)
    assert s2.input_spread == pytest.approx(float(h1.detach().double().std(dim=0).mean()), rel=1e-6)
    assert s1.backward == pytest.approx(float(delta1.detach().norm()), rel=1e-5)
    assert s2.backward == pytest.approx(float(delta2.detach().norm()), rel=1e-5)
    assert s1.weight_grad == pytest.approx(float(grad_w1.detach().norm()), rel=1e-5)
    assert s2.weight_grad == pytest.approx(float(grad_w2.detach().norm()), rel=1e-5)
    assert s2.weight_norm == pytest.approx(float(second.weight.detach().norm()), rel=1e-6)
    # the activation: saturated share from tanh' = 1 - h^2 below 0.1 of its peak 1; no weights
    assert sa.saturated == pytest.approx(float((1 - h1**2 < 0.1).float().mean()))
    assert sa.weight_grad is None and sa.dead is None and s1.update_ratio is None
    # the weight-gradient view is the same pass
    assert list(probes.grad_norms(net, x, y, F.cross_entropy).values()) == [s1.weight_grad, s2.weight_grad]


class _Shuffled(nn.Module):
    """Registered out, hidden, inp; runs inp -> hidden -> out, with functional activations."""

    def __init__(self):
        super().__init__()
        self.out = nn.Linear(6, 2)
        self.hidden = nn.Linear(6, 6)
        self.inp = nn.Linear(3, 6)

    def forward(self, x):
        return self.out(F.relu(self.hidden(F.relu(self.inp(x)))))


def test_signals_follow_the_forward_order_and_see_functional_activations():
    torch.manual_seed(1)
    model = _Shuffled()
    with torch.no_grad():
        model.inp.bias[:3] = -100.0  # three units of the first ReLU are dead for any input in range
    x = torch.randn(8, 3)
    rows = probes.signals(model, x, torch.zeros(8, dtype=torch.long), F.cross_entropy)
    assert [r.name for r in rows] == ["inp", "hidden", "out"]
    assert list(probes.grad_norms(model, x, torch.zeros(8, dtype=torch.long), F.cross_entropy)) == [
        "inp.weight", "hidden.weight", "out.weight"]
    # F.relu has no module: its dead units show as input features of the next layer that are zero for the batch
    assert rows[1].dead == pytest.approx(0.5)
    assert rows[0].dead == 0.0


def test_in_place_activation_measures_the_pre_activation():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(inplace=True), nn.Linear(16, 2))
    ref = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 2))
    ref.load_state_dict(net.state_dict())
    x, y = torch.randn(32, 3), torch.randint(0, 2, (32,))
    got, expected = probes.signals(net, x, y, F.cross_entropy), probes.signals(ref, x, y, F.cross_entropy)
    assert got == expected
    z = net[0](x)
    assert got[1].input_rms == pytest.approx(float(z.detach().double().pow(2).mean().sqrt()), rel=1e-6)  # before ReLU
    assert got[0].output_rms == pytest.approx(got[1].input_rms)
    assert got[1].dead is not None and 0 <= got[1].dead <= 1
    # the in-place activation's statistics view agrees too
    assert probes.activation_stats(net, x) == probes.activation_stats(ref, x)
    assert probes.inactive_fraction(net, x) == probes.inactive_fraction(ref, x)


def test_sparse_embedding_and_a_layer_called_twice():
    torch.manual_seed(3)

    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4, sparse=True)
            self.mix = nn.Linear(4, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, tokens):
            h = self.emb(tokens).mean(dim=1)
            return self.head(torch.tanh(self.mix(torch.tanh(self.mix(h)))))  # mix runs twice

    model = Bag()
    tokens, y = torch.randint(0, 10, (6, 5)), torch.randint(0, 2, (6,))
    rows = {r.name: r for r in probes.signals(model, tokens, y, F.cross_entropy)}
    assert list(rows) == ["emb", "mix", "head"] and rows["mix"].calls == 2
    model.zero_grad()
    F.cross_entropy(model(tokens), y).backward()
    assert model.emb.weight.grad.is_sparse
    assert rows["emb"].weight_grad == pytest.approx(float(model.emb.weight.grad.to_dense().norm()), rel=1e-6)
    assert rows["mix"].weight_grad == pytest.approx(float(model.mix.weight.grad.norm()), rel=1e-6)
    assert rows["emb"].input_rms is None  # integer token ids carry no forward signal to measure


class _ModelOutput(OrderedDict):
    """What Hugging Face models return (transformers.utils.ModelOutput): an ordered dict whose entries are
    also attributes, tensors first-class; the zoo with transformers itself is the checkup's (issue 19)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(key) from err


class _DictModel(nn.Module):
    """Keyword inputs in, a Hugging Face ModelOutput (with its own loss) out."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.GELU())
        self.classifier = nn.Linear(8, 3)

    def forward(self, features, labels=None):
        logits = self.classifier(self.body(features))
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return _ModelOutput(loss=loss, logits=logits) if loss is not None else _ModelOutput(logits=logits)


def test_dict_inputs_and_model_output_with_its_own_loss():
    torch.manual_seed(4)
    model = _DictModel()
    x, y = torch.randn(7, 4), torch.randint(0, 3, (7,))
    own = probes.signals(model, {"features": x, "labels": y})
    given = probes.signals(model, {"features": x}, y, lambda out, t: F.cross_entropy(out.logits, t))
    assert [r.name for r in own] == ["body.0", "body.1", "classifier"]
    assert own == given
    with pytest.raises(ValueError, match="no 'loss'"):
        probes.signals(model, {"features": x})
    with pytest.raises(ValueError, match="scalar"):
        probes.signals(model, {"features": x}, y, lambda out, t: F.cross_entropy(out.logits, t, reduction="none"))


def test_the_model_comes_back_exactly():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Embedding(20, 8, max_norm=1.0), nn.Flatten(), nn.Linear(24, 16), nn.BatchNorm1d(16),
                          nn.Dropout(0.5), nn.Tanh(), nn.Linear(16, 2))
    with torch.no_grad():
        model[0].weight.mul_(10)  # rows far above max_norm: the forward pass renormalizes them in place
    model.train()
    model[3].eval()  # a mixed mode must survive too
    tokens, y = torch.randint(0, 20, (10, 3)), torch.randint(0, 2, (10,))
    F.cross_entropy(model(tokens.clone()), y).backward()  # user .grad that must survive
    with torch.no_grad():
        model[0].weight.mul_(10)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    fired = []
    model[2].weight.register_hook(lambda g: fired.append("tensor hook"))
    model[2].register_full_backward_hook(lambda *a: fired.append("module hook"))
    model[6].weight.register_post_accumulate_grad_hook(lambda p: fired.append("accumulate hook"))
    rng = torch.get_rng_state()
    rows = probes.signals(model, tokens, y, F.cross_entropy, train=True,
                          optimizer=torch.optim.Adam(model.parameters(), lr=1e-3))
    assert fired == []
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))
    assert [m.training for m in model] == [True, True, True, False, True, True, True]
    assert {r.name for r in rows} == {"0", "2", "3", "5", "6"}
    assert all(r.update_ratio is not None and r.update_ratio > 0 for r in rows if r.weight_grad is not None)
    # the user's hooks still work afterwards
    F.cross_entropy(model(tokens), y).backward()
    assert fired.count("tensor hook") == 1 and "module hook" in fired and "accumulate hook" in fired


def test_update_ratio_of_one_sgd_step_and_the_optimizer_restored():
    net, x, y = _two_layer()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()
    opt.step()  # some momentum in the state
    before = {k: v.clone() for k, v in opt.state_dict()["state"][0].items()}
    rows = probes.signals(net, x, y, F.cross_entropy, optimizer=opt)
    assert all(torch.equal(v, opt.state_dict()["state"][0][k]) for k, v in before.items())
    plain = probes.signals(net, x, y, F.cross_entropy, optimizer=torch.optim.SGD(net.parameters(), lr=0.1))
    g = dict(zip(["0", "2"], torch.autograd.grad(F.cross_entropy(net(x), y), [net[0].weight, net[2].weight]),
                 strict=True))
    for row in plain:
        if row.weight_grad is not None:
            w = net.get_submodule(row.name).weight.detach()
            assert row.update_ratio == pytest.approx(float((0.1 * g[row.name]).double().std() / w.double().std()),
                                                     rel=1e-5)
    assert rows[0].update_ratio != plain[0].update_ratio  # momentum made the step bigger


def test_norms_never_underflow():
    tiny = torch.full((100,), 1e-30)
    assert torch.linalg.vector_norm(tiny) == 0
    assert probes.safe_norm(tiny) == pytest.approx(1e-29, rel=1e-6)
    assert probes.safe_norm(torch.full((4,), 1e-200, dtype=torch.float64)) == pytest.approx(2e-200, rel=1e-12)
    assert probes.safe_norm(torch.full((4,), 1e200, dtype=torch.float64)) == pytest.approx(2e200, rel=1e-12)
    assert math.isinf(probes.safe_norm(torch.tensor([math.inf, 1.0])))
    assert probes.safe_norm(torch.zeros(3)) == 0.0
    # a 30-layer sigmoid network: the first weight gradient's entries are about 1e-27, their float32
    # squares underflow, and torch's own norm reads 0; the core's does not
    torch.manual_seed(6)
    net = nn.Sequential(*[m for _ in range(30) for m in (nn.Linear(8, 8), nn.Sigmoid())], nn.Linear(8, 2))
    x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
    (g,) = torch.autograd.grad(F.cross_entropy(net(x), y), net[0].weight)
    assert torch.linalg.vector_norm(g) == 0
    first = probes.signals(net, x, y, F.cross_entropy)[0].weight_grad
    assert first == pytest.approx(float(g.double().norm()), rel=1e-12) and 0 < first < 1e-20


def test_signals_reject_bad_input_with_the_parameter_named():
    net, x, y = _two_layer()
    for call, name in [
        (lambda: probes.signals("net", x, y, F.cross_entropy), "model"),
        (lambda: probes.signals(nn.ReLU(), x, y, F.cross_entropy), "model"),
        (lambda: probes.signals(net, x, y, "ce"), "loss_fn"),
        (lambda: probes.signals(net, x, y, F.cross_entropy, optimizer="sgd"), "optimizer"),
    ]:
        with pytest.raises(ValueError, match=name):
            call()
    # errors from the user's own code pass through unchanged
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        probes.signals(net, torch.randn(5, 7), y, F.cross_entropy)
