"""Tests for vanishing.precision: formats, exact underflow depths, gradients per format, timing helpers."""

import math

import pytest
import torch
from torch import nn

from vanishing import models, precision


def test_format_info_float16_by_hand():
    f = precision.format_info("float16")
    assert f["bits"] == 16 and f["mantissa_bits"] == 10
    assert f["eps"] == 2.0**-10
    assert f["smallest_normal"] == 2.0**-14
    assert f["smallest_subnormal"] == 2.0**-24
    assert f["max"] == 65504.0


@pytest.mark.parametrize(
    "name, with_sub, ftz",
    # 0.25**n = 2**(-2n): zero once 2n exceeds -(emin - p), resp. -emin.
    [("float16", 13, 8), ("bfloat16", 67, 64), ("float32", 75, 64), ("float64", 538, 512)],
)
def test_power_underflow_depth_quarter(name, with_sub, ftz):
    assert precision.power_underflow_depth(0.25, name) == with_sub
    assert precision.power_underflow_depth(0.25, name, flush_to_zero=True) == ftz


def test_power_underflow_depth_half_float16():
    # smallest float16 subnormal 2**-24 survives; 2**-25 is a tie and rounds to even (zero)
    assert precision.power_underflow_depth(0.5, "float16") == 25
    assert precision.power_underflow_depth(0.5, "float16", flush_to_zero=True) == 15


def test_safe_norm():
    v = torch.full((4,), 1e-30)
    assert float(v.norm()) == 0.0  # the naive norm underflows
    assert precision.safe_norm(v) == pytest.approx(2e-30, rel=1e-6)
    assert precision.safe_norm(torch.tensor([3.0, 4.0])) == 5.0
    assert precision.safe_norm(torch.zeros(3)) == 0.0
    big = torch.full((4,), 1e300, dtype=torch.float64)
    assert precision.safe_norm(big) == pytest.approx(2e300)


def test_zero_depth():
    assert precision.zero_depth([0.0, 0.0, 1e-3, 1.0]) == 3
    assert precision.zero_depth([1.0, 2.0]) is None


def test_layer_grad_norms_match_float32_autograd():
    torch.manual_seed(0)
    net = models.mlp(in_features=3, out_features=2, depth=3, width=4, activation="sigmoid", init="xavier")
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    expected = [float(layer.weight.grad.norm()) for layer in net.linears()]
    got = precision.layer_grad_norms(net, x, y, name="float64")
    assert got == pytest.approx(expected, rel=1e-5)
    # loss scaling by a power of two changes nothing when nothing underflows
    assert precision.layer_grad_norms(net, x, y, name="float32", loss_scale=2.0**10) == pytest.approx(expected, rel=1e-5)
    # the model itself is untouched (still float32)
    assert next(net.parameters()).dtype == torch.float32


def test_layer_grad_norms_float16_underflows_in_deep_sigmoid_net():
    torch.manual_seed(0)
    net = models.mlp(in_features=4, out_features=2, depth=40, width=8, activation="sigmoid", init="xavier")
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    assert precision.zero_depth(precision.layer_grad_norms(net, x, y, name="float16")) is not None
    assert precision.zero_depth(precision.layer_grad_norms(net, x, y, name="float64")) is None


def test_time_call_and_throughput_are_positive():
    calls = []
    sec = precision.time_call(lambda: calls.append(1), repeat=3, warmup=2)
    assert sec >= 0 and len(calls) == 5
    assert precision.matmul_throughput(8, repeat=1) > 0


@pytest.mark.parametrize(
    "call, word",
    [
        (lambda: precision.dtype_of("float8"), "format"),
        (lambda: precision.power_underflow_depth(1.5, "float32"), "factor"),
        (lambda: precision.power_underflow_depth(0.5, "float32", max_depth=0), "max_depth"),
        (lambda: precision.power_underflow_depth(0.5, "float32", max_depth=10), "max_depth"),
        (lambda: precision.power_underflow_depth(1e-30, "float16"), "rounds"),
        (lambda: precision.layer_grad_norms("x", torch.zeros(1, 1), torch.zeros(1)), "model"),
        (lambda: precision.layer_grad_norms(nn.Linear(1, 2), torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), loss_scale=0), "loss_scale"),
        (lambda: precision.zero_depth([]), "norms"),
        (lambda: precision.safe_norm([1.0]), "tensor"),
        (lambda: precision.safe_norm(torch.zeros(0)), "tensor"),
        (lambda: precision.time_call(lambda: None, repeat=0), "repeat"),
        (lambda: precision.time_call(lambda: None, warmup=-1), "warmup"),
        (lambda: precision.matmul_throughput(0), "n"),
    ],
)
def test_errors(call, word):
    with pytest.raises(ValueError, match=word):
        call()


def test_infinite_norm_passes_through():
    assert math.isinf(precision.safe_norm(torch.tensor([float("inf"), 1.0])))
