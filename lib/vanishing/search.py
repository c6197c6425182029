"""Training without gradients: random weight guessing and a simple evolution strategy.

Both methods treat a model as one flat vector of numbers and only ever ask
"how good is this vector?", so no gradient - vanishing or not - is involved.
What they cost is counted in *evaluations* of a fitness function (one forward
pass over the evaluation set each), which is the currency the book uses to
compare them with gradient descent (Schmidhuber & Hochreiter 1996 compare
guessing with gradient methods the same way).

* :func:`flat_parameters` / :func:`set_flat_parameters` - a model as a vector and back;
* :func:`random_search` - draw every weight uniformly at random, keep the best guess;
* :func:`evolution_strategy` - a (mu + lambda) strategy: mutate the best vectors
  with Gaussian noise, keep the best of parents and children together;
* :func:`antithetic_es` - the evolution strategy of Salimans et al. (2017): estimate the
  gradient of the noise-smoothed fitness from mirrored pairs of perturbations and step along it;
* :func:`accuracy_fitness` - the usual fitness: classification accuracy on a fixed set;
* :func:`cross_entropy_fitness` - a smooth fitness: minus the cross-entropy on a fixed set;
* :func:`gradient_descent` - the baseline, full-batch gradient training that stops
  when solved and reports its cost in the same currency.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from .checks import integer, module, number

__all__ = [
    "SearchResult",
    "flat_parameters",
    "set_flat_parameters",
    "accuracy_fitness",
    "cross_entropy_fitness",
    "antithetic_es",
    "random_search",
    "evolution_strategy",
    "gradient_descent",
    "BACKWARD_COST",
]

#: Cost of one gradient step in forward-pass equivalents: the forward pass plus a
#: backward pass that costs about two forward passes (the usual rule of thumb).
BACKWARD_COST = 3


@dataclass
class SearchResult:
    """What a search found and what it cost.

    ``best`` is the best parameter vector seen, ``best_fitness`` its fitness,
    ``evaluations`` how many times the fitness function was called,
    ``solved`` whether ``best_fitness`` reached the target, and ``history``
    the best fitness so far after each evaluation (length ``evaluations``).
    ``trace`` holds ``(evaluations spent, value)`` pairs of a quantity a search
    was asked to track (:func:`antithetic_es`'s ``track``), empty otherwise.
    """

    best: torch.Tensor
    best_fitness: float
    evaluations: int
    solved: bool
    history: list[float] = field(default_factory=list)
    trace: list[tuple[int, float]] = field(default_factory=list)


def _check_model(model: object) -> None:
    model = module(model)
    if not any(True for _ in model.parameters()):
        raise ValueError("model has no parameters to search over")


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """All of ``model``'s parameters concatenated into one detached 1-D vector (in
    ``model.parameters()`` order)."""
    _check_model(model)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def set_flat_parameters(model: nn.Module, vector: torch.Tensor) -> None:
    """Copy ``vector`` (as produced by :func:`flat_parameters`) into ``model``'s parameters,
    in place."""
    _check_model(model)
    total = sum(p.numel() for p in model.parameters())
    if not isinstance(vector, torch.Tensor) or vector.dim() != 1 or vector.numel() != total:
        shape = tuple(vector.shape) if isinstance(vector, torch.Tensor) else type(vector).__name__
        raise ValueError(
            f"vector must be a 1-D tensor of {total} numbers (the model's parameter count), "
            f"got {shape}"
        )
    params = list(model.parameters())
    with torch.no_grad():
        for p, v in zip(params, vector.split([p.numel() for p in params]), strict=True):
            p.copy_(v.reshape(p.shape))


def _check_data(model: object, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    """The checks every fitness makes on its model and data."""
    _check_model(model)
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise ValueError(
            "inputs and targets must be non-empty and of equal length, "
            f"got {len(inputs)} and {len(targets)}"
        )


def accuracy_fitness(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> Callable[[], float]:
    """A fitness function: the fraction of ``inputs`` whose arg-max output equals ``targets``.

    It reads the model's *current* parameters, so the searches below set a
    candidate vector and then call it. Evaluation runs without autograd.
    """
    _check_data(model, inputs, targets)

    def fitness() -> float:
        with torch.no_grad():
            return float((model(inputs).argmax(dim=-1) == targets).float().mean())

    return fitness


def cross_entropy_fitness(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> Callable[[], float]:
    """A smooth fitness: minus the mean cross-entropy of the model's outputs on ``inputs``.

    Accuracy changes only when some example's arg-max flips, so most small
    perturbations of the weights leave it unchanged; the cross-entropy moves with
    every weight, which gives a search that compares nearby vectors something to
    compare. Higher is better, as for every fitness here. Evaluation runs without
    autograd and reads the model's current parameters.
    """
    _check_data(model, inputs, targets)

    def fitness() -> float:
        with torch.no_grad():
            return -float(nn.functional.cross_entropy(model(inputs), targets))

    return fitness


def _check_common(max_evals: object, target: object) -> None:
    integer("max_evals", max_evals)
    if target is not None and not isinstance(target, (int, float)):
        raise ValueError(f"target must be a number or None, got {target!r}")


def random_search(
    model: nn.Module,
    fitness: Callable[[], float],
    *,
    max_evals: int,
    low: float = -1.0,
    high: float = 1.0,
    target: float | None = None,
    seed: int = 0,
) -> SearchResult:
    """Guess every weight uniformly in ``[low, high)`` until ``fitness`` reaches ``target``.

    Each guess is independent of the previous ones (no learning at all), so
    the number of guesses needed is geometric with mean ``1/p``, where ``p`` is
    the share of weight space that solves the task. The model is left holding
    the best guess. Stops after ``max_evals`` fitness calls.
    """
    _check_model(model)
    _check_common(max_evals, target)
    if not high > low:
        raise ValueError(f"high must exceed low, got low={low!r}, high={high!r}")
    gen = torch.Generator().manual_seed(seed)
    n = flat_parameters(model).numel()
    best: torch.Tensor | None = None
    best_fit, history = -float("inf"), []
    for _ in range(max_evals):
        guess = low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)
        set_flat_parameters(model, guess.float())
        fit = float(fitness())
        if fit > best_fit:
            best, best_fit = guess.float(), fit
        history.append(best_fit)
        if target is not None and best_fit >= target:
            break
    # best is None only if no fitness beat -inf (all -inf or NaN): set_flat_parameters then raises.
    set_flat_parameters(model, cast(torch.Tensor, best))
    return SearchResult(
        cast(torch.Tensor, best), best_fit, len(history),
        target is not None and best_fit >= target, history,
    )


def evolution_strategy(
    model: nn.Module,
    fitness: Callable[[], float],
    *,
    max_evals: int,
    sigma: float = 0.5,
    init_scale: float = 1.0,
    target: float | None = None,
    seed: int = 0,
) -> SearchResult:
    """A simple (5 + 20) evolution strategy over the flattened weights.

    Start from 20 uniform guesses in ``[-init_scale, init_scale)``; each
    generation keeps the 5 fittest vectors seen so far (the parents) and makes
    20 children by adding Gaussian noise of standard deviation ``sigma`` to
    parents chosen in turn. The next parents are chosen from the
    parents and children together (plus selection, "+"; comma selection, ",",
    would choose from the children only). Selection uses nothing but fitness
    values, so a vanishing gradient cannot slow it; what slows it is a fitness
    landscape that is flat in every direction the noise explores.
    The model is left holding the best vector found.
    """
    _check_model(model)
    _check_common(max_evals, target)
    number("sigma", sigma)
    number("init_scale", init_scale)
    population, parents = 20, 5
    gen = torch.Generator().manual_seed(seed)
    n = flat_parameters(model).numel()
    pool: list[tuple[float, torch.Tensor]] = []
    history: list[float] = []
    best_fit = -float("inf")
    evals = 0
    candidates = [init_scale * (2 * torch.rand(n, generator=gen) - 1) for _ in range(population)]
    while True:
        for vec in candidates:
            set_flat_parameters(model, vec)
            fit = float(fitness())
            evals += 1
            pool.append((fit, vec))
            best_fit = max(best_fit, fit)
            history.append(best_fit)
            if evals >= max_evals or (target is not None and best_fit >= target):
                break
        # Stable sort: among equal fitness the older vector wins, which keeps runs reproducible.
        pool = sorted(pool, key=lambda item: -item[0])[:parents]
        if evals >= max_evals or (target is not None and best_fit >= target):
            break
        candidates = [
            pool[i % len(pool)][1] + sigma * torch.randn(n, generator=gen)
            for i in range(population)
        ]
    set_flat_parameters(model, pool[0][1])
    return SearchResult(
        pool[0][1], pool[0][0], evals, target is not None and best_fit >= target, history
    )


def _centred_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks of ``values`` scaled to [-0.5, 0.5], tied values sharing the mean of their ranks.

    Averaging over ties (instead of ranking them in evaluation order) keeps a
    group of equal fitness values from pushing the search along the sum of
    their perturbations: a constant fitness gives all zeros, hence no step.
    """
    below = (values[None, :] < values[:, None]).sum(dim=1)
    equal = (values[None, :] == values[:, None]).sum(dim=1)
    return (below + (equal - 1) / 2) / (len(values) - 1) - 0.5


def antithetic_es(
    model: nn.Module,
    fitness: Callable[[], float],
    *,
    max_evals: int,
    pairs: int = 25,
    sigma: float = 0.05,
    lr: float = 0.1,
    target: float | None = None,
    seed: int = 0,
    track: Callable[[], float] | None = None,
) -> SearchResult:
    """The evolution strategy of Salimans et al. (2017), started from the model's current weights.

    Each generation draws ``pairs`` Gaussian directions ``eps`` and evaluates
    the fitness at ``theta + sigma*eps`` and at ``theta - sigma*eps`` (antithetic,
    or mirrored, sampling: the two halves of a pair cancel the part of the
    fitness that is even in ``eps``, which lowers the variance). The
    ``2*pairs`` fitness values are replaced by their centred ranks (from -0.5 to
    0.5; tied values share the average of their ranks, so a tie adds no
    direction), which makes the step independent of the fitness's scale, and
    ``theta`` moves by ``lr`` times the estimate
    ``sum_i (r_i+ - r_i-) eps_i / (2 * pairs * sigma)`` of the gradient of the
    fitness smoothed by the noise. Then the new centre is evaluated (one more
    evaluation, counted), so a generation costs ``2*pairs + 1`` evaluations; the
    search stops when the next generation would exceed ``max_evals`` or the
    centre reaches ``target``. ``best`` is the best centre, ``history`` the best
    centre fitness so far after each evaluation (the initial centre's before the
    first centre evaluation). ``track``, if given, is read at each centre and
    lands in ``trace``; it is a measurement, and its cost is not counted in
    ``evaluations``. The model is left holding the best centre.
    """
    _check_model(model)
    _check_common(max_evals, target)
    integer("pairs", pairs)
    number("sigma", sigma)
    number("lr", lr)
    if max_evals < 2 * pairs + 2:
        raise ValueError(
            f"max_evals must allow the start and one generation, at least 2*pairs+2 = "
            f"{2 * pairs + 2}, got {max_evals!r}"
        )
    gen = torch.Generator().manual_seed(seed)
    theta = flat_parameters(model)
    best, best_fit = theta, float(fitness())
    history = [best_fit]
    trace: list[tuple[int, float]] = [] if track is None else [(1, float(track()))]

    def reached() -> bool:
        return target is not None and best_fit >= target

    while len(history) + 2 * pairs + 1 <= max_evals and not reached():
        eps = torch.randn(pairs, theta.numel(), generator=gen, dtype=theta.dtype)
        values = []
        for sign in (1.0, -1.0):
            for e in eps:
                set_flat_parameters(model, theta + sign * sigma * e)
                values.append(float(fitness()))
        history += [best_fit] * (2 * pairs)
        shaped = _centred_ranks(torch.tensor(values, dtype=torch.float64)).to(theta.dtype)
        theta = theta + lr * ((shaped[:pairs] - shaped[pairs:]) @ eps) / (2 * pairs * sigma)
        set_flat_parameters(model, theta)
        fit = float(fitness())
        if fit > best_fit:
            best, best_fit = theta, fit
        history.append(best_fit)
        if track is not None:
            trace.append((len(history), float(track())))
    set_flat_parameters(model, best)
    return SearchResult(best, best_fit, len(history), reached(), history, trace)


def gradient_descent(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    max_steps: int,
    lr: float = 0.01,
    target: float = 1.0,
) -> SearchResult:
    """Full-batch Adam on the cross-entropy of ``(inputs, targets)`` until training accuracy
    reaches ``target``.

    The accuracy is read from each step's own forward pass (before the
    update), so checking costs nothing extra. ``evaluations`` counts
    :data:`BACKWARD_COST` per step - forward plus backward in forward-pass
    equivalents over the same set a search evaluates - so the result is
    comparable with :func:`random_search` and :func:`evolution_strategy`.
    """
    _check_model(model)
    integer("max_steps", max_steps)
    number("lr", lr)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history: list[float] = []
    best_fit, best = -float("inf"), flat_parameters(model)
    for _ in range(max_steps):
        opt.zero_grad(set_to_none=True)
        out = model(inputs)
        fit = float((out.detach().argmax(dim=-1) == targets).float().mean())
        if fit > best_fit:
            best_fit, best = fit, flat_parameters(model)
        history.append(best_fit)
        if fit >= target:
            break
        nn.functional.cross_entropy(out, targets).backward()
        opt.step()
    set_flat_parameters(model, best)
    return SearchResult(best, best_fit, BACKWARD_COST * len(history), best_fit >= target, history)
