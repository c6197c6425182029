"""Tests for vanishing.precision: formats, shrinking products and where they underflow, gradients per
format, timing helpers."""

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


def test_underflow_steps_half_float16():
    # smallest float16 subnormal 2**-24 survives; 2**-25 is a tie and rounds to even (zero);
    # flushed to zero from 2**-15, the first product below the smallest normal 2**-14
    assert precision.underflow_steps(0.5, fmt="float16") == (15, 25)


def test_computed_formats_are_the_native_ones_narrowest_first():
    assert precision.COMPUTED == ("float16", "bfloat16", "float32", "float64")
    assert all(precision.format_info(f)["native_mul"] for f in precision.COMPUTED)


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
        (lambda: precision.dtype_of("float8"), "name="),
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


# Shrinking products in every format (the first edition's vanishing.numerics).


def test_format_info_float16_layout_by_hand():
    info = precision.format_info("float16")
    # IEEE half: 5 exponent bits, 10 fraction bits, normals down to 2**-14, subnormals to 2**-24.
    assert (info["bits"], info["exponent_bits"], info["mantissa_bits"]) == (16, 5, 10)
    assert info["smallest_normal"] == 2.0**-14
    assert info["smallest_subnormal"] == 2.0**-24
    assert info["max"] == 65504.0
    assert info["native_mul"] is True


def test_float8_layout_and_emulated_multiplication():
    e4m3 = precision.format_info("float8_e4m3fn")
    assert (e4m3["exponent_bits"], e4m3["mantissa_bits"]) == (4, 3)
    assert e4m3["smallest_subnormal"] == 2.0**-9
    assert precision.format_info("float8_e5m2")["smallest_subnormal"] == 2.0**-16


def test_repeated_product_powers_of_two_are_exact_until_underflow():
    values = precision.repeated_product(0.25, 4, fmt="float32")
    assert list(values) == [1.0, 0.25, 0.0625, 0.015625, 0.00390625]
    # 0.25**19 = 2**-38 is a normal float32 number; 0.25**49 = 2**-98 as well.
    assert precision.repeated_product(0.25, 49, fmt="float32")[19] == 2.0**-38
    assert precision.repeated_product(0.25, 49, fmt="float32")[49] == 2.0**-98


def test_repeated_product_rounds_factor_into_format():
    # 0.3 is not a float8 number: e4m3 rounds it to 0.3125 = 5/16.
    values = precision.repeated_product(0.3, 1, fmt="float8_e4m3fn")
    assert values[1] == 0.3125


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        # 0.25**k = 2**(-2k): subnormal once 2k exceeds the normal exponent range, zero once
        # 2**(-2k) is at most half the smallest subnormal (the tie rounds to even, i.e. 0).
        ("float64", (512, 538)),
        ("float32", (64, 75)),
        ("bfloat16", (64, 67)),
        ("float16", (8, 13)),
        ("float8_e5m2", (8, 9)),
        ("float8_e4m3fn", (4, 5)),
    ],
)
def test_underflow_steps_quarter(fmt, expected):
    assert precision.underflow_steps(0.25, fmt=fmt) == expected


def test_underflow_steps_none_when_not_reached():
    assert precision.underflow_steps(0.5, fmt="float32", max_steps=10) == (None, None)


@pytest.mark.parametrize("bad", ["float128", "int8", None, 32])
def test_unknown_format_is_rejected(bad):
    with pytest.raises(ValueError, match="fmt="):
        precision.format_info(bad)
    with pytest.raises(ValueError, match="fmt="):
        precision.repeated_product(0.5, 2, fmt=bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.5", True])
def test_repeated_product_rejects_bad_factor(bad):
    with pytest.raises(ValueError, match="factor"):
        precision.repeated_product(bad, 2)


@pytest.mark.parametrize("bad", [-1, 2.0, True])
def test_repeated_product_rejects_bad_steps(bad):
    with pytest.raises(ValueError, match="steps"):
        precision.repeated_product(0.5, bad)


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.25])
def test_underflow_steps_rejects_factor_outside_unit_interval(bad):
    with pytest.raises(ValueError, match="factor"):
        precision.underflow_steps(bad)


@pytest.mark.parametrize("bad", [0, -3, 1.5])
def test_underflow_steps_rejects_bad_max_steps(bad):
    with pytest.raises(ValueError, match="max_steps"):
        precision.underflow_steps(0.5, max_steps=bad)


def test_time_call_synchronizes_an_asynchronous_device_before_reading_the_clock(monkeypatch):
    events = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: events.append("sync"))
    monkeypatch.setattr(precision.time, "perf_counter", lambda: events.append("clock") or 0.0)
    precision.time_call(lambda: events.append("run"), repeat=2, warmup=1, device="mps")
    assert events == ["run", "sync"] + ["clock", "run", "sync", "clock"] * 2
    events.clear()
    precision.time_call(lambda: events.append("run"), repeat=1, warmup=0, device="cpu")
    assert events == ["clock", "run", "clock"]  # nothing to wait for on the CPU


def test_synchronizer_rejects_a_device_torch_cannot_wait_for():
    with pytest.raises(ValueError, match="device="):
        precision.synchronizer("meta")


def test_amp_grad_norms_scaler_moves_the_first_zero_and_halves_after_overflow():
    torch.manual_seed(0)
    net = models.mlp(in_features=16, out_features=2, depth=40, width=16, activation="sigmoid", init="xavier")
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 16, generator=gen), torch.randint(0, 2, (16,), generator=gen)
    plain, none = precision.amp_grad_norms(net, x, y, name="float16")
    scaled, scale = precision.amp_grad_norms(net, x, y, name="float16", init_scale=2.0**16)
    assert none is None and scale == 2.0**16  # no overflow: the scale stays
    assert precision.zero_depth(plain) < precision.zero_depth(scaled)  # the scaler keeps more layers alive
    assert sum(g == 0 for g in scaled) < sum(g == 0 for g in plain)
    # a scale so large that the top gradients overflow: the step is skipped and the scale halved
    _, halved = precision.amp_grad_norms(net, x, y, name="float16", init_scale=2.0**40)
    assert halved == 2.0**39


def test_amp_grad_norms_bfloat16_agrees_with_float32_when_nothing_underflows():
    torch.manual_seed(0)
    net = models.mlp(in_features=3, out_features=2, depth=2, width=4, activation="sigmoid", init="xavier")
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])
    norms, _ = precision.amp_grad_norms(net, x, y, name="bfloat16")
    assert norms == pytest.approx(precision.layer_grad_norms(net, x, y, name="float32"), rel=0.05)


@pytest.mark.parametrize(
    "kwargs, word",
    [(dict(name="float32"), "name="), (dict(init_scale=0.0), "init_scale")],
)
def test_amp_grad_norms_errors(kwargs, word):
    with pytest.raises(ValueError, match=word):
        precision.amp_grad_norms(nn.Linear(2, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), **kwargs)
