"""Tests for vanishing.search: flattening, guessing, evolution and the gradient baseline."""

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

    res = search.evolution_strategy(model, fitness, max_evals=600, population=20, parents=5, sigma=0.1, seed=0)
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
        (dict(population=0), "population"),
        (dict(parents=0), "parents"),
        (dict(population=3, parents=4), "parents"),
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
    with pytest.raises(ValueError, match="optimizer"):
        search.gradient_descent(tiny(), x, y, max_steps=1, optimizer="rprop")
