"""Tests for vanishing.search: flattening, guessing, evolution and the gradient baseline."""

import math

import pytest
import torch
from torch import nn

from vanishing import search


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(2, 2)  # 4 weights + 2 biases = 6 numbers


def test_flat_round_trip():
    model = tiny()
    vec = torch.arange(6, dtype=torch.float32)
    search.set_flat_parameters(model, vec)
    assert torch.equal(model.weight.detach(), torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    assert torch.equal(model.bias.detach(), torch.tensor([4.0, 5.0]))
    assert torch.equal(search.flat_parameters(model), vec)


def test_accuracy_fitness_by_hand():
    model = tiny()
    # weight = identity, bias 0: predicts the larger input coordinate
    search.set_flat_parameters(model, torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0]))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 1, 1, 1])
    assert search.accuracy_fitness(model, x, y)() == 0.75


def test_random_search_counts_and_stops():
    model = tiny()
    calls = []

    def fitness() -> float:
        calls.append(1)
        return float(model.bias.detach()[0] > 0)  # half of all guesses succeed

    res = search.random_search(model, fitness, max_evals=100, target=1.0, seed=0)
    assert res.solved and res.best_fitness == 1.0
    assert res.evaluations == len(calls) == len(res.history)
    assert model.bias.detach()[0] > 0  # the model holds the best guess
    # every weight drawn within the bounds
    assert search.flat_parameters(model).abs().max() <= 1.0


def test_random_search_exhausts_budget():
    model = tiny()
    res = search.random_search(model, lambda: 0.0, max_evals=7, target=1.0, seed=0)
    assert not res.solved and res.evaluations == 7


def test_evolution_strategy_climbs_a_quadratic():
    model = tiny()
    target = torch.full((6,), 0.5)

    def fitness() -> float:
        return -float(((search.flat_parameters(model) - target) ** 2).sum())

    res = search.evolution_strategy(model, fitness, max_evals=600, sigma=0.1, seed=0)
    assert res.evaluations == 600
    assert res.best_fitness > -0.05
    assert res.history == sorted(res.history)  # best-so-far never decreases
    assert res.best_fitness == pytest.approx(fitness())


def test_gradient_descent_solves_separable_task_and_counts():
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 1, 0, 1])
    res = search.gradient_descent(model, x, y, max_steps=500, lr=0.1)
    assert res.solved
    assert res.evaluations == search.BACKWARD_COST * len(res.history)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(max_evals=0), "max_evals"),
        (dict(max_evals=5, low=1.0, high=1.0), "high"),
        (dict(max_evals=5, target="x"), "target"),
    ],
)
def test_random_search_errors(kwargs, word):
    with pytest.raises(ValueError, match=word):
        search.random_search(tiny(), lambda: 0.0, **kwargs)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(sigma=0.0), "sigma"),
        (dict(init_scale=-1.0), "init_scale"),
    ],
)
def test_evolution_strategy_errors(kwargs, word):
    with pytest.raises(ValueError, match=word):
        search.evolution_strategy(tiny(), lambda: 0.0, max_evals=5, **kwargs)


def test_other_errors():
    with pytest.raises(ValueError, match="model"):
        search.flat_parameters("not a model")
    with pytest.raises(ValueError, match="parameters"):
        search.flat_parameters(nn.ReLU())
    with pytest.raises(ValueError, match="vector"):
        search.set_flat_parameters(tiny(), torch.zeros(5))
    with pytest.raises(ValueError, match="equal length"):
        search.accuracy_fitness(tiny(), torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
    x, y = torch.zeros(2, 2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="max_steps"):
        search.gradient_descent(tiny(), x, y, max_steps=0)
    with pytest.raises(ValueError, match="lr"):
        search.gradient_descent(tiny(), x, y, max_steps=1, lr=0.0)


def test_cross_entropy_fitness_by_hand():
    model = tiny()
    search.set_flat_parameters(model, torch.zeros(6))  # equal logits: cross-entropy ln 2 for every example
    x, y = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0, 1])
    assert search.cross_entropy_fitness(model, x, y)() == pytest.approx(-math.log(2))
    search.set_flat_parameters(model, torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, math.log(3)]))
    # logits (0, ln 3): p(class 1) = 3/4 for both examples
    assert search.cross_entropy_fitness(model, x, y)() == pytest.approx(-(math.log(4) + math.log(4 / 3)) / 2)


def test_antithetic_es_climbs_a_quadratic_and_counts():
    model = tiny()
    search.set_flat_parameters(model, torch.zeros(6))
    target = torch.full((6,), 0.5)

    def fitness() -> float:
        return -float(((search.flat_parameters(model) - target) ** 2).sum())

    res = search.antithetic_es(model, fitness, max_evals=500, pairs=5, sigma=0.1, lr=0.05, seed=0, track=fitness)
    generations = (500 - 1) // 11  # the start costs one evaluation, each generation 2*5 + 1
    assert res.evaluations == len(res.history) == 1 + 11 * generations
    assert res.history[0] == pytest.approx(-1.5) and res.history == sorted(res.history)
    assert res.best_fitness > -0.01  # from -1.5 at the start
    assert res.best_fitness == pytest.approx(fitness())  # the model holds the best centre
    assert [k for k, _ in res.trace] == [1 + 11 * g for g in range(generations + 1)]
    assert max(v for _, v in res.trace) == pytest.approx(res.best_fitness)


def test_antithetic_es_stops_at_target_and_is_reproducible():
    def run(seed):
        model = tiny()
        search.set_flat_parameters(model, torch.zeros(6))
        return search.antithetic_es(model, lambda: -float((search.flat_parameters(model) - 1).abs().sum()),
                                    max_evals=10_000, pairs=4, lr=0.1, target=-1.0, seed=seed)

    res = run(0)
    assert res.solved and res.best_fitness >= -1.0 and res.evaluations < 10_000
    assert torch.equal(run(0).best, res.best) and not torch.equal(run(1).best, res.best)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(pairs=0), "pairs"),
        (dict(sigma=0.0), "sigma"),
        (dict(lr=-1.0), "lr"),
        (dict(max_evals=11, pairs=5), "max_evals"),
        (dict(max_evals=0), "max_evals"),
    ],
)
def test_antithetic_es_errors(kwargs, word):
    kwargs = {"max_evals": 100, **kwargs}
    with pytest.raises(ValueError, match=word):
        search.antithetic_es(tiny(), lambda: 0.0, **kwargs)


def test_cross_entropy_fitness_needs_equal_lengths():
    with pytest.raises(ValueError, match="equal length"):
        search.cross_entropy_fitness(tiny(), torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))


def test_antithetic_es_does_not_move_on_ties():
    """A constant fitness ties every value, and a fitness even around the start ties each mirrored pair:
    neither carries a direction, so the centre must stay where it started (evaluation-order ranks of
    ties would move it along the sum of the '+' perturbations)."""
    model = tiny()
    start = search.flat_parameters(model).clone()
    res = search.antithetic_es(model, lambda: 0.0, max_evals=100, pairs=5, seed=0,
                               track=lambda: float((search.flat_parameters(model) - start).abs().max()))
    assert len(res.trace) > 5 and all(v == 0.0 for _, v in res.trace)
    search.set_flat_parameters(model, torch.zeros(6))
    res = search.antithetic_es(model, lambda: -float((search.flat_parameters(model) ** 2).sum()), max_evals=100,
                               pairs=5, seed=0, track=lambda: float(search.flat_parameters(model).abs().max()))
    assert len(res.trace) > 5 and all(v == 0.0 for _, v in res.trace)
