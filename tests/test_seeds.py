"""Results over seeds (vanishing.seeds): median, range and counts, with clear errors."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vanishing import seeds


def test_spread_of_an_odd_and_an_even_number_of_seeds():
    s = seeds.spread([0.9, 0.1, 0.5, 0.7, 0.3])
    assert (s.median, s.low, s.high, s.n) == (0.5, 0.1, 0.9, 5)
    assert seeds.spread([4, 1, 2, 3]).median == 2.5


def test_format_prints_median_range_and_seed_count():
    s = seeds.spread([0.8512, 0.80, 0.9049, 0.86, 0.84])
    assert str(s) == "0.85 (0.8-0.9, 5 seeds)"
    assert s.format(".2f") == "0.85 (0.80-0.90, 5 seeds)"
    assert seeds.spread([1e-8, 3e-8, 2e-8]).format(".1e") == "2.0e-08 (1.0e-08-3.0e-08, 3 seeds)"


def test_a_negative_range_is_written_with_to():
    assert seeds.spread([-0.15, -0.10, -0.03]).format(".2f") == "-0.10 (-0.15 to -0.03, 3 seeds)"
    assert seeds.spread([-0.02, 0.02, 0.10]).format(".2f") == "0.02 (-0.02 to 0.10, 3 seeds)"
    # a signed format gives "+0.01-+0.12" with a dash, which reads as a subtraction
    assert seeds.spread([0.01, 0.05, 0.12]).format("+.2f") == "+0.05 (+0.01 to +0.12, 3 seeds)"
    assert seeds.spread([-0.15, -0.03]).format("6.2f") == " -0.09 ( -0.15 to  -0.03, 2 seeds)"


def test_a_diverged_seed_counts_and_nan_is_refused():
    s = seeds.spread([0.1, math.inf, 0.2])
    assert s.median == 0.2 and s.high == math.inf
    with pytest.raises(ValueError, match="must not be NaN"):
        seeds.spread([0.1, math.nan])


def test_empty_and_non_numbers_are_refused():
    with pytest.raises(ValueError, match="at least one result"):
        seeds.spread([])
    with pytest.raises(ValueError, match="values must be numbers"):
        seeds.spread(["high", 0.1])


def test_count_against_a_threshold_above_and_below():
    acc = [0.95, 0.91, 0.9, 0.4, 0.1]
    assert seeds.count(acc, 0.9) == 3
    assert seeds.count(acc, 0.4, above=False) == 2
    with pytest.raises(ValueError, match="threshold must be a number"):
        seeds.count(acc, "0.9")


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=20))
def test_median_lies_within_the_range_and_half_the_seeds_on_each_side(values):
    s = seeds.spread(values)
    assert s.low <= s.median <= s.high and s.n == len(values)
    assert seeds.count(values, s.median) >= len(values) / 2
    assert seeds.count(values, s.median, above=False) >= len(values) / 2
