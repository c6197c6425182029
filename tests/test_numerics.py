"""Tests for vanishing.numerics: shrinking products in every floating-point format."""

from __future__ import annotations

import pytest

from vanishing import numerics as nu


def test_format_info_float16_by_hand():
    info = nu.format_info("float16")
    # IEEE half: 5 exponent bits, 10 fraction bits, normals down to 2**-14, subnormals to 2**-24.
    assert (info["bits"], info["exponent_bits"], info["mantissa_bits"]) == (16, 5, 10)
    assert info["smallest_normal"] == 2.0**-14
    assert info["smallest_subnormal"] == 2.0**-24
    assert info["max"] == 65504.0
    assert info["native_mul"] is True


def test_float8_layout_and_emulated_multiplication():
    e4m3 = nu.format_info("float8_e4m3fn")
    assert (e4m3["exponent_bits"], e4m3["mantissa_bits"]) == (4, 3)
    assert e4m3["smallest_subnormal"] == 2.0**-9
    assert nu.format_info("float8_e5m2")["smallest_subnormal"] == 2.0**-16


def test_repeated_product_powers_of_two_are_exact_until_underflow():
    values = nu.repeated_product(0.25, 4, fmt="float32")
    assert list(values) == [1.0, 0.25, 0.0625, 0.015625, 0.00390625]
    # 0.25**19 = 2**-38 is a normal float32 number; 0.25**49 = 2**-98 as well.
    assert nu.repeated_product(0.25, 49, fmt="float32")[19] == 2.0**-38
    assert nu.repeated_product(0.25, 49, fmt="float32")[49] == 2.0**-98


def test_repeated_product_rounds_factor_into_format():
    # 0.3 is not a float8 number: e4m3 rounds it to 0.3125 = 5/16.
    values = nu.repeated_product(0.3, 1, fmt="float8_e4m3fn")
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
    assert nu.underflow_steps(0.25, fmt=fmt) == expected


def test_underflow_steps_none_when_not_reached():
    assert nu.underflow_steps(0.5, fmt="float32", max_steps=10) == (None, None)


@pytest.mark.parametrize("bad", ["float128", "int8", None, 32])
def test_unknown_format_is_rejected(bad):
    with pytest.raises(ValueError, match="fmt="):
        nu.format_info(bad)
    with pytest.raises(ValueError, match="fmt="):
        nu.repeated_product(0.5, 2, fmt=bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.5", True])
def test_repeated_product_rejects_bad_factor(bad):
    with pytest.raises(ValueError, match="factor"):
        nu.repeated_product(bad, 2)


@pytest.mark.parametrize("bad", [-1, 2.0, True])
def test_repeated_product_rejects_bad_steps(bad):
    with pytest.raises(ValueError, match="steps"):
        nu.repeated_product(0.5, bad)


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.25])
def test_underflow_steps_rejects_factor_outside_unit_interval(bad):
    with pytest.raises(ValueError, match="factor"):
        nu.underflow_steps(bad)


@pytest.mark.parametrize("bad", [0, -3, 1.5])
def test_underflow_steps_rejects_bad_max_steps(bad):
    with pytest.raises(ValueError, match="max_steps"):
        nu.underflow_steps(0.5, max_steps=bad)
