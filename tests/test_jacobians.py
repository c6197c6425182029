"""Behaviour and errors of vanishing.jacobians: the recurrent model's step Jacobians, their products, BPTT terms."""

from __future__ import annotations

import math

import pytest
import torch

from vanishing import jacobians as jb


def _net(n: int = 3, steps: int = 5, activation: str = "sigmoid", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w_rec = torch.randn(n, n, generator=g, dtype=torch.float64)
    w_in = torch.randn(n, 2, generator=g, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    u = torch.randn(steps, 2, generator=g, dtype=torch.float64)
    x0 = torch.randn(n, generator=g, dtype=torch.float64)
    return x0, u, w_rec, w_in, b


def test_derivative_matches_autograd_and_bounds():
    z = torch.linspace(-6, 6, 101, dtype=torch.float64, requires_grad=True)
    for act in jb.ACTIVATIONS:
        (d,) = torch.autograd.grad(jb._activate(z, act).sum(), z)
        assert torch.allclose(jb.derivative(z.detach(), act), d)
        assert float(d.max()) == pytest.approx(jb.DERIVATIVE_BOUND[act], rel=1e-12)


def test_unroll_one_step_by_hand():
    w_rec = torch.tensor([[0.0, 2.0], [0.5, 0.0]], dtype=torch.float64)
    w_in = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    b = torch.tensor([0.1, -0.1], dtype=torch.float64)
    x0 = torch.zeros(2, dtype=torch.float64)
    st = jb.unroll(x0, torch.ones(1, 1, dtype=torch.float64), w_rec=w_rec, w_in=w_in, b=b)
    # σ(0) = 1/2 for both units: x1 = [2·½ + 1 + 0.1, 0.5·½ - 0.1]
    assert torch.allclose(st[1], torch.tensor([2.1, 0.15], dtype=torch.float64))


def test_step_jacobians_match_autograd():
    x0, u, w_rec, w_in, b = _net(activation="tanh")
    st = jb.unroll(x0, u, w_rec=w_rec, w_in=w_in, b=b, activation="tanh")
    jac = jb.step_jacobians(st, w_rec=w_rec, activation="tanh")
    for t in range(1, st.shape[0]):
        f = lambda x, t=t: w_rec @ torch.tanh(x) + w_in @ u[t - 1] + b  # noqa: E731
        auto = torch.autograd.functional.jacobian(f, st[t - 1])
        assert torch.allclose(jac[t - 1], auto)


def test_product_norm_hand_2x2():
    # W = [[0, 2], [ε, 0]], D = c·I: (W D)^2 = 2ε c² I, so ‖(W D)^k‖ for even k is (2ε c²)^(k/2).
    eps, c = 0.8, 0.5
    j = torch.tensor([[0.0, 2.0 * c], [eps * c, 0.0]], dtype=torch.float64).expand(6, 2, 2)
    ln = jb.product_log_norms(j)
    assert float(ln[1]) == pytest.approx(math.log(2 * eps * c**2))
    assert float(ln[5]) == pytest.approx(3 * math.log(2 * eps * c**2))
    assert float(ln[0]) == pytest.approx(math.log(1.0))  # ‖W D‖ = max(2c, εc) = 1


def test_product_norm_survives_long_products_and_zero():
    j = torch.full((2000, 1, 1), 0.01, dtype=torch.float64)
    ln = jb.product_log_norms(j)
    assert float(ln[-1]) == pytest.approx(2000 * math.log(0.01))
    z = torch.zeros(3, 2, 2, dtype=torch.float64)
    assert torch.isinf(jb.product_log_norms(z)).all()


def test_product_norm_is_spectral_and_batched():
    # diag(2, 0.5)^k has largest singular value 2^k (its Frobenius norm would be larger).
    j = torch.diag(torch.tensor([2.0, 0.5], dtype=torch.float64)).repeat(4, 3, 1, 1)
    ln = jb.product_log_norms(j)
    assert ln.shape == (4, 3)
    expected = torch.tensor([k * math.log(2) for k in (1, 2, 3)], dtype=torch.float64).expand(4, 3)
    torch.testing.assert_close(ln, expected)


def test_bptt_terms_sum_to_autograd():
    x0, u, w_rec, w_in, b = _net(n=4, steps=7)
    w = w_rec.clone().requires_grad_(True)
    st = jb.unroll(x0, u, w_rec=w, w_in=w_in, b=b)
    v = torch.arange(1.0, 5.0, dtype=torch.float64)
    (auto,) = torch.autograd.grad((v * st[-1]).sum(), w)
    terms = jb.bptt_terms(st.detach(), v, w_rec=w_rec)
    assert terms.shape == (7, 4, 4)
    assert torch.allclose(terms.sum(0), auto)


def test_horizons():
    h = jb.horizons(0.9)
    assert h["mass"] == pytest.approx(10.0)
    assert h["e_fold"] == pytest.approx(1 / math.log(1 / 0.9))
    assert h["source"] == pytest.approx(1 / 0.9)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, True, "0.5"])
def test_horizons_errors(bad):
    with pytest.raises(ValueError, match="rate"):
        jb.horizons(bad)


def test_errors():
    x0, u, w_rec, w_in, b = _net()
    with pytest.raises(ValueError, match="activation"):
        jb._activate(x0, "relu")
    with pytest.raises(ValueError, match="w_rec"):
        jb.unroll(x0, u, w_rec=torch.zeros(3, 2), w_in=w_in, b=b)
    with pytest.raises(ValueError, match="x0"):
        jb.unroll(x0[:2], u, w_rec=w_rec, w_in=w_in, b=b)
    with pytest.raises(ValueError, match="inputs"):
        jb.unroll(x0, u[:, :1], w_rec=w_rec, w_in=w_in, b=b)
    st = jb.unroll(x0, u, w_rec=w_rec, w_in=w_in, b=b)
    with pytest.raises(ValueError, match="states"):
        jb.step_jacobians(st[:1], w_rec=w_rec)
    with pytest.raises(ValueError, match="jacobians"):
        jb.product_log_norms(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="grad_last"):
        jb.bptt_terms(st, torch.zeros(2), w_rec=w_rec)
