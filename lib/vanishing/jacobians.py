"""Jacobian products of the prototypical recurrent network x_t = W_rec σ(x_{t-1}) + W_in u_t + b.

Backpropagation through time multiplies one step Jacobian
``∇_x F(x_{t-1}) = W_rec diag(σ'(x_{t-1}))`` per time step; whether that
product shrinks or grows with the lag decides whether the gradient vanishes or
explodes. This module runs the network, builds the step Jacobians, multiplies
them with a running renormalization (so that lags of thousands of steps
neither underflow nor overflow) and splits the BPTT gradient into its
per-lag terms. Every function broadcasts over leading batch dimensions, so a
sweep over many recurrent matrices is one tensor computation.
"""

from __future__ import annotations

import math

import torch

from .checks import choice, number

__all__ = [
    "ACTIVATIONS",
    "DERIVATIVE_BOUND",
    "derivative",
    "unroll",
    "step_jacobians",
    "product_log_norms",
    "bptt_terms",
    "horizons",
]

#: The activations of the recurrent model.
ACTIVATIONS = ("sigmoid", "tanh")

#: γ = sup |σ'| for each activation: 1/4 for the logistic sigmoid, 1 for tanh.
DERIVATIVE_BOUND = {"sigmoid": 0.25, "tanh": 1.0}


def _check_activation(activation: str) -> None:
    choice("activation", activation, ACTIVATIONS)


def _activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    """σ(x) for ``activation`` in :data:`ACTIVATIONS`, elementwise."""
    _check_activation(activation)
    return torch.sigmoid(x) if activation == "sigmoid" else torch.tanh(x)


def derivative(x: torch.Tensor, activation: str) -> torch.Tensor:
    """σ'(x) in closed form: σ(1-σ) for the sigmoid, 1 - tanh² for tanh."""
    _check_activation(activation)
    s = _activate(x, activation)
    return s * (1 - s) if activation == "sigmoid" else 1 - s * s


def _check_square(w_rec: torch.Tensor) -> int:
    if not isinstance(w_rec, torch.Tensor) or w_rec.dim() < 2 or w_rec.shape[-1] != w_rec.shape[-2]:
        shape = tuple(w_rec.shape) if isinstance(w_rec, torch.Tensor) else type(w_rec).__name__
        raise ValueError(f"w_rec must be a tensor of square matrices (..., n, n), got {shape}")
    return w_rec.shape[-1]


def unroll(
    x0: torch.Tensor,
    inputs: torch.Tensor,
    *,
    w_rec: torch.Tensor,
    w_in: torch.Tensor,
    b: torch.Tensor,
    activation: str = "sigmoid",
) -> torch.Tensor:
    """Run x_t = W_rec σ(x_{t-1}) + W_in u_t + b from ``x0`` for every step of ``inputs``.

    ``x0`` has shape (..., n), ``inputs`` (..., T, m), ``w_rec`` (..., n, n),
    ``w_in`` (..., n, m) and ``b`` (..., n); leading dimensions broadcast.
    Returns the states x_0, ..., x_T with shape (..., T+1, n). The graph is kept,
    so autograd can differentiate through the whole unrolled network.
    """
    _check_activation(activation)
    n = _check_square(w_rec)
    if x0.shape[-1] != n or b.shape[-1] != n:
        raise ValueError(
            f"x0 and b must end in the state size n={n}, got {tuple(x0.shape)} and {tuple(b.shape)}"
        )
    if inputs.dim() < 2 or w_in.shape[-2] != n or w_in.shape[-1] != inputs.shape[-1]:
        raise ValueError(
            f"inputs must be (..., T, m) and w_in (..., {n}, m), "
            f"got {tuple(inputs.shape)} and {tuple(w_in.shape)}"
        )
    states = [x0]
    x = x0
    for t in range(inputs.shape[-2]):
        drive = (w_in @ inputs[..., t, :].unsqueeze(-1)).squeeze(-1)
        x = (w_rec @ _activate(x, activation).unsqueeze(-1)).squeeze(-1) + drive + b
        states.append(x)
    return torch.stack(states, dim=-2)


def _check_states(states: torch.Tensor, w_rec: torch.Tensor) -> int:
    """Return n after checking that ``states`` is (..., T+1, n) with T >= 1 for the n x n
    ``w_rec``."""
    n = _check_square(w_rec)
    if states.dim() < 2 or states.shape[-1] != n or states.shape[-2] < 2:
        raise ValueError(
            f"states must have shape (..., T+1, {n}) with T >= 1, got {tuple(states.shape)}"
        )
    return n


def step_jacobians(
    states: torch.Tensor, *, w_rec: torch.Tensor, activation: str = "sigmoid"
) -> torch.Tensor:
    """The step Jacobians ∂x_t/∂x_{t-1} = W_rec diag(σ'(x_{t-1})) for t = 1, ..., T.

    ``states`` is what :func:`unroll` returns, (..., T+1, n); the result has
    shape (..., T, n, n), entry ``[..., t-1, :, :]`` belonging to step t.
    """
    _check_states(states, w_rec)
    d = derivative(states[..., :-1, :], activation)
    return w_rec.unsqueeze(-3) * d.unsqueeze(-2)


def product_log_norms(jacobians: torch.Tensor) -> torch.Tensor:
    """Natural log of ‖J_T J_{T-1} ⋯ J_{T-k+1}‖ for every lag k = 1, ..., T.

    This is the norm of ∂x_T/∂x_{T-k}, the factor by which BPTT carries a
    gradient from the last step back k steps, in the operator norm (the largest
    singular value).
    The running product is rescaled to norm 1 after each step and the scale is
    accumulated as a logarithm, so no lag under- or overflows.
    Returns shape (..., T).
    """
    if jacobians.dim() < 3 or jacobians.shape[-1] != jacobians.shape[-2]:
        raise ValueError(f"jacobians must have shape (..., T, n, n), got {tuple(jacobians.shape)}")
    steps = jacobians.shape[-3]
    prod = None
    log_scale = torch.zeros(jacobians.shape[:-3], dtype=jacobians.dtype, device=jacobians.device)
    out = []
    for k in range(1, steps + 1):
        j = jacobians[..., steps - k, :, :]
        prod = j if prod is None else prod @ j
        norm = torch.linalg.matrix_norm(prod, ord=2)
        out.append(log_scale + torch.log(norm))
        # Rescale; a product that is exactly zero stays zero (its log norm is -inf from here on).
        safe = torch.where(norm > 0, norm, torch.ones_like(norm))
        prod = prod / safe[..., None, None]
        log_scale = log_scale + torch.log(safe)
    return torch.stack(out, dim=-1)


def bptt_terms(
    states: torch.Tensor,
    grad_last: torch.Tensor,
    *,
    w_rec: torch.Tensor,
    activation: str = "sigmoid",
) -> torch.Tensor:
    """The per-lag terms whose sum is ∂L/∂W_rec for a loss L(x_T) of the last state.

    Term k (k = 0, ..., T-1) is the path through which W_rec acts at step
    t = T - k and then reaches x_T through k step Jacobians:
    ``(J_T ⋯ J_{t+1})ᵀ ∇_{x_T}L · σ(x_{t-1})ᵀ``. ``grad_last`` is ∇_{x_T}L with
    shape (..., n). Returns shape (..., T, n, n), indexed by k.
    """
    n = _check_states(states, w_rec)
    if grad_last.shape[-1] != n:
        raise ValueError(f"grad_last must end in n={n}, got shape {tuple(grad_last.shape)}")
    jac = step_jacobians(states, w_rec=w_rec, activation=activation)
    steps = jac.shape[-3]
    g = grad_last
    terms = []
    for k in range(steps):
        t = steps - k  # the step at which W_rec acts directly
        s = _activate(states[..., t - 1, :], activation)
        terms.append(g.unsqueeze(-1) * s.unsqueeze(-2))
        g = (jac[..., t - 1, :, :].transpose(-1, -2) @ g.unsqueeze(-1)).squeeze(-1)
    return torch.stack(terms, dim=-3)


def horizons(rate: float) -> dict[str, float]:
    """How far back a gradient whose terms decay like rate**k effectively reaches.

    ``mass`` is Σ_k rate^k = 1/(1-rate), the number of terms a geometric tail
    is worth; ``e_fold`` is 1/|ln rate|, the lag over which a term shrinks by e;
    ``source`` is rate^-1, the O(γ^-1) horizon the encyclopedia article states.
    """
    number("rate", rate, high=1.0, high_ok=False, allowed="a number in (0, 1)")
    return {"mass": 1.0 / (1.0 - rate), "e_fold": 1.0 / abs(math.log(rate)), "source": 1.0 / rate}
