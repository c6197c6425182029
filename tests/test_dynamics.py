"""Behaviour and errors of vanishing.dynamics: the one-neuron network, its fixed points, folds and loss wall."""

from __future__ import annotations

import math

import pytest
import torch

from vanishing import dynamics as dy

PHI = (1 + math.sqrt(5)) / 2


def test_one_step_by_hand():
    # x=0.5, w=5, b=-2.5: σ(0) = 0.5, so the point is fixed whatever ε is.
    assert float(dy.simulate(0.5, w=5.0, b=-2.5, eps=0.3, steps=1)) == pytest.approx(0.5)
    # x=0, w=0, b=0, u=2, ε=0.5: 0.5·σ(0) + 0.5·2 = 1.25.
    assert float(dy.simulate(0.0, w=0.0, b=0.0, eps=0.5, steps=1, u=2.0)) == pytest.approx(1.25)


def test_simulate_broadcasts_and_records():
    b = torch.linspace(-3, -2, 7, dtype=torch.float64)
    traj = dy.simulate(0.5, w=5.0, b=b, eps=0.1, steps=10, trajectory=True)
    assert traj.shape == (11, 7)
    assert torch.allclose(traj[-1], dy.simulate(0.5, w=5.0, b=b, eps=0.1, steps=10))


def test_fixed_points_against_closed_form():
    xs = dy.fixed_points(w=5.0, b=-2.5)
    assert len(xs) == 3
    assert xs[1] == pytest.approx(0.5, abs=1e-12)
    assert xs[0] + xs[2] == pytest.approx(1.0, abs=1e-12)  # symmetric about 1/2 at b = -w/2
    for x in xs:
        assert float(dy.fixed_point_bias(x, w=5.0)) == pytest.approx(-2.5, abs=1e-10)
    assert len(dy.fixed_points(w=3.0, b=-1.5)) == 1  # w <= 4: a single fixed point


def test_fold_points_closed_form_w5():
    (xl, bl), (xh, bh) = dy.fold_points(w=5.0)
    assert xl == pytest.approx((1 - 1 / math.sqrt(5)) / 2)
    assert xh == pytest.approx((1 + 1 / math.sqrt(5)) / 2)
    # b = -5/2 ∓ δ with δ = 2 ln φ - √5/2 (negative): the lower-x fold has the larger b.
    delta = 2 * math.log(PHI) - math.sqrt(5) / 2
    assert bl == pytest.approx(-2.5 - delta)
    assert bh == pytest.approx(-2.5 + delta)
    assert float(dy.flow_slope(xl, w=5.0)) == pytest.approx(0.0, abs=1e-12)


def test_stability_and_sensitivity():
    xs = dy.fixed_points(w=5.0, b=-2.5)
    assert [bool(dy.is_stable(x, w=5.0)) for x in xs] == [True, False, True]
    # Implicit differentiation of x = σ(wx+b): dx/db = s/(1 - w s), s = x(1-x); check by a finite difference.
    h = 1e-6
    up = dy.fixed_points(w=5.0, b=-2.5 + h)[2]
    dn = dy.fixed_points(w=5.0, b=-2.5 - h)[2]
    assert float(dy.fixed_point_sensitivity(xs[2], w=5.0)) == pytest.approx((up - dn) / (2 * h), rel=1e-5)
    assert float(dy.fixed_point_sensitivity(0.5, w=5.0)) == pytest.approx(0.25 / (1 - 1.25))


def test_end_state_gradients_match_finite_differences():
    b = torch.tensor([-2.7, -2.45, -2.2], dtype=torch.float64)
    g = dy.end_state_gradients(0.3, w=5.0, b=b, eps=0.1, steps=50)
    h = 1e-6
    fd_b = (dy.simulate(0.3, w=5.0, b=b + h, eps=0.1, steps=50) - dy.simulate(0.3, w=5.0, b=b - h, eps=0.1, steps=50)) / (
        2 * h
    )
    fd_x = (dy.simulate(0.3 + h, w=5.0, b=b, eps=0.1, steps=50) - dy.simulate(0.3 - h, w=5.0, b=b, eps=0.1, steps=50)) / (
        2 * h
    )
    assert torch.allclose(g["db"], fd_b, rtol=1e-5)
    assert torch.allclose(g["dx0"], fd_x, rtol=1e-5)
    # One step, by hand: ∂x1/∂x0 = 1 - ε + ε w σ'(w x0 + b).
    one = dy.end_state_gradients(0.5, w=5.0, b=-2.5, eps=0.1, steps=1)
    assert float(one["dx0"]) == pytest.approx(0.9 + 0.1 * 5 * 0.25)


def test_sensitivities_equal_autograd():
    b = torch.tensor([-2.7, -2.5, -2.45], dtype=torch.float64)
    w = torch.tensor([5.0, 4.5, 6.0], dtype=torch.float64)
    fwd = dy.sensitivities(0.4, w=w, b=b, eps=0.2, steps=40)
    auto = dy.end_state_gradients(0.4, w=w, b=b, eps=0.2, steps=40)
    for key in ("x", "dx0", "db", "dw"):
        assert torch.allclose(fwd[key], auto[key], rtol=1e-10, atol=1e-14)


def test_wall_loss_and_descent():
    # On the unstable point the state never moves: L = (0.855 - 0.5)².
    assert float(dy.wall_loss(-2.5)) == pytest.approx(0.355**2)
    plain = dy.descend(torch.tensor([-2.2], dtype=torch.float64), lr=0.05, iters=3)
    assert plain["b"].shape == (4, 1)
    assert bool((plain["loss"][1:] <= plain["loss"][:-1]).all())
    clipped = dy.descend(torch.tensor([-2.8], dtype=torch.float64), lr=0.05, iters=3, clip=1e-3)
    steps = (clipped["b"][1:] - clipped["b"][:-1]).abs()
    assert torch.allclose(steps, torch.full_like(steps, 0.05 * 1e-3))
    both = dy.descend(torch.tensor([-2.2], dtype=torch.float64), lr=0.01, iters=2, w0=5.0)
    assert float(both["w"][-1, 0]) != 5.0
    # Plain descent's first step is -lr times the autograd gradient of the loss.
    b = torch.tensor([-2.45], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(dy.wall_loss(b).sum(), b)
    one = dy.descend(torch.tensor([-2.45], dtype=torch.float64), lr=0.01, iters=1)
    assert float(one["b"][1, 0]) == pytest.approx(-2.45 - 0.01 * float(g[0]))
    mixed = dy.descend(torch.tensor([-2.8, -2.8], dtype=torch.float64), lr=0.05, iters=1,
                       clip=torch.tensor([float("inf"), 1e-3], dtype=torch.float64))
    assert float(mixed["b"][1, 1]) == pytest.approx(-2.8 + 0.05 * 1e-3)
    assert float(mixed["b"][1, 0]) == pytest.approx(float(
        dy.descend(torch.tensor([-2.8], dtype=torch.float64), lr=0.05, iters=1)["b"][1, 0]))


def test_errors():
    with pytest.raises(ValueError, match="eps"):
        dy.simulate(0.5, w=5.0, b=-2.5, eps=0.0, steps=1)
    with pytest.raises(ValueError, match="steps"):
        dy.simulate(0.5, w=5.0, b=-2.5, eps=0.1, steps=0)
    with pytest.raises(ValueError, match="x must lie"):
        dy.fixed_point_bias(1.0, w=5.0)
    with pytest.raises(ValueError, match="grid"):
        dy.fixed_points(w=5.0, b=-2.5, grid=2)
    with pytest.raises(ValueError, match="w must be"):
        dy.fold_points(w=4.0)
    with pytest.raises(ValueError, match="lr"):
        dy.descend(-2.0, lr=0.0, iters=1)
    with pytest.raises(ValueError, match="iters"):
        dy.descend(-2.0, lr=0.1, iters=0)
    with pytest.raises(ValueError, match="clip"):
        dy.descend(-2.0, lr=0.1, iters=1, clip=-1.0)
    with pytest.raises(ValueError, match="w0"):
        dy.descend(-2.0, lr=0.1, iters=1, w=4.0)
    with pytest.raises(ValueError, match="clip"):
        dy.descend(-2.0, lr=0.1, iters=1, clip=torch.tensor([1.0, 0.0]))
