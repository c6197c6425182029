"""The feed-forward pieces: the sources' initializers (vanishing.models) and the measurements chapters 05-07 use (vanishing.probes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from vanishing import models, probes


def test_kumar_std_sigmoid_is_sqrt_64_over_5():
    # g(0) = 1/2, g'(0) = 1/4: v^2 = 1 / (N * 1/16 * 5/4) = 12.8 / N.
    assert models.kumar_std(1) == pytest.approx(math.sqrt(12.8))
    assert models.kumar_std(64) == pytest.approx(math.sqrt(12.8 / 64))
    assert models.kumar_std(100, "tanh") == pytest.approx(0.1)
    assert models.kumar_std(8, "relu") == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_kumar_std_rejects_bad_fan_in(bad):
    with pytest.raises(ValueError, match="fan_in"):
        models.kumar_std(bad)


def test_kumar_std_rejects_unknown_activation():
    # leaky ReLU is a known activation of the library without a Kumar standard deviation: said so
    with pytest.raises(ValueError, match="^activation='leaky_relu' has no Kumar standard deviation"):
        models.kumar_std(10, "leaky_relu")
    with pytest.raises(ValueError, match="activation"):
        models.kumar_init("linear")


def test_yilmaz_poli_mean_by_hand():
    assert models.yilmaz_poli_mean(4) == -1.0  # -8/4 = -2 is clipped at -1
    assert models.yilmaz_poli_mean(8) == -1.0
    assert models.yilmaz_poli_mean(64) == -0.125
    with pytest.raises(ValueError, match="fan_in"):
        models.yilmaz_poli_mean(0)


def test_normal_init_moments():
    w = torch.empty(400, 500)
    torch.manual_seed(0)
    models.normal_init(mean=-0.5, std=0.2)(w)
    assert float(w.mean()) == pytest.approx(-0.5, abs=0.002)
    assert float(w.std()) == pytest.approx(0.2, abs=0.002)
    models.normal_init()(w)  # Glorot: sqrt(2 / (500 + 400))
    assert float(w.std()) == pytest.approx(math.sqrt(2 / 900), rel=0.01)
    models.yilmaz_poli_init(std=0.01)(w)
    assert float(w.mean()) == pytest.approx(-8 / 500, abs=1e-3)


def test_normal_init_errors():
    with pytest.raises(ValueError, match="mean"):
        models.normal_init(mean="zero")
    with pytest.raises(ValueError, match="std"):
        models.normal_init(std=-1.0)
    with pytest.raises(ValueError, match="2-D"):
        models.normal_init()(torch.empty(3))


def test_inits_plug_into_mlp():
    torch.manual_seed(0)
    net = models.mlp(in_features=64, out_features=2, depth=2, width=64, activation="sigmoid",
                     init=models.kumar_init("sigmoid"))
    assert float(net.blocks[1].linear.weight.detach().std()) == pytest.approx(math.sqrt(12.8 / 64), rel=0.05)


def test_gradient_profile_shape_and_linear_case():
    torch.manual_seed(0)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    prof = probes.gradient_profile(inputs=x, targets=y, depth=3, width=4, activation="relu", init="he", seeds=(0, 1))
    assert prof.shape == (2, 4)
    assert np.all(prof >= 0)
    with pytest.raises(ValueError, match="seeds"):
        probes.gradient_profile(inputs=x, targets=y, depth=3, width=4, activation="relu", init="he", seeds=())


def test_inactive_fraction_by_hand():
    lin = nn.Linear(1, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0], [0.0]]))
        lin.bias.copy_(torch.tensor([0.0, -1.0]))  # unit 2 is always negative: dead
    net = nn.Sequential(lin, nn.ReLU())
    assert probes.inactive_fraction(net, torch.tensor([[1.0], [2.0]])) == [0.5]
    assert probes.inactive_fraction(net, torch.tensor([[-1.0], [-2.0]])) == [1.0]
    with pytest.raises(ValueError, match="activation"):
        probes.inactive_fraction(nn.Sequential(nn.Linear(1, 1)), torch.ones(1, 1))
    with pytest.raises(ValueError, match="model"):
        probes.inactive_fraction("net", torch.ones(1, 1))


def test_gradient_predictiveness_by_hand():
    # Logits (w0, w1) for input 1 and class 0: L = log(1 + exp(d)) with d = w1 - w0, and
    # g = q (-1, 1) with q = sigmoid(d). A step eta along -g makes d' = d - 2 eta q, so the loss
    # is log(1 + exp(d')), the gradient change sqrt(2) |sigmoid(d') - q| and ||eta g|| = sqrt(2) eta q.
    net = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.5], [1.5]]))
    d, etas = 1.0, [0.5, 2.0]
    q = 1 / (1 + math.exp(-d))
    after = [d - 2 * eta * q for eta in etas]
    change = [math.sqrt(2) * abs(1 / (1 + math.exp(-a)) - q) for a in after]
    res = probes.gradient_predictiveness(net, torch.ones(1, 1), torch.tensor([0]), etas=etas)
    assert float(res["grad_norm"]) == pytest.approx(math.sqrt(2) * q, rel=1e-6)
    assert res["loss"].tolist() == pytest.approx([math.log1p(math.exp(a)) for a in after], rel=1e-6)
    assert res["grad_change"].tolist() == pytest.approx(change, rel=1e-5)
    assert float(res["beta"]) == pytest.approx(
        max(c / (eta * math.sqrt(2) * q) for c, eta in zip(change, etas, strict=True)), rel=1e-5)
    assert net.weight.detach().flatten().tolist() == [0.5, 1.5]  # left unchanged
    with pytest.raises(ValueError, match="etas"):
        probes.gradient_predictiveness(net, torch.ones(1, 1), torch.tensor([0]), etas=[])


def test_gradient_profile_keeps_tiny_gradients():
    # Inputs of 1e-25 make the first layer's gradient entries about 1e-25; they square to 1e-50, below
    # float32's range: the norm must still be positive.
    torch.manual_seed(0)
    x, y = 1e-25 * torch.randn(8, 4), torch.randint(0, 2, (8,))
    prof = probes.gradient_profile(inputs=x, targets=y, depth=2, width=4, activation="tanh", init="xavier")
    assert np.all(prof > 0) and np.all(prof[:, 0] < 1e-20)
    with pytest.raises(ValueError, match="targets must be class indices"):
        probes.gradient_profile(inputs=x, targets=y.float(), depth=2, width=4, activation="tanh", init="xavier")


@pytest.mark.parametrize(
    "kw",
    [
        dict(activation="tanh", init="xavier"),  # stacked, cross-entropy
        dict(activation="sigmoid", init=models.normal_init(std=0.3), norm="layer"),  # stacked, callable init
        dict(activation="relu", init="he", norm="batch"),  # one network at a time (batch norm couples examples)
    ],
)
def test_gradient_profile_equals_one_network_at_a_time(kw):
    # Stacked or not, each row is what probes measures on models.mlp built right after torch.manual_seed(seed).
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 3, generator=g), torch.randint(0, 2, (12,), generator=g)
    prof = probes.gradient_profile(inputs=x, targets=y, depth=3, width=5, seeds=(0, 4), **kw)
    for row, seed in zip(prof, (0, 4), strict=True):
        torch.manual_seed(seed)
        net = models.mlp(in_features=3, out_features=2, depth=3, width=5, **kw)
        net.train()
        grads = torch.autograd.grad(nn.functional.cross_entropy(net(x), y), [lin.weight for lin in net.linears()])
        expected = [float(gr.double().norm()) for gr in grads]
        np.testing.assert_allclose(row, expected, rtol=1e-5)
