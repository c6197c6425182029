"""Tasks for the experiments: real data that ships with scikit-learn, and synthetic problems.

Nothing here downloads anything. Every function takes a ``seed`` so a data set
is the same on every machine, independent of the global random state.
"""

from __future__ import annotations

import numpy as np
import torch

from .checks import integer, number

__all__ = ["digits", "first_input_recall"]


def digits(
    *, test_fraction: float = 0.25, seed: int = 0, device: torch.device | str = "cpu",
    unit: bool = False,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes).

    Returns ``(train, test)``, each a pair ``(inputs, labels)`` with inputs of
    shape (n, 64) standardized with the training set's mean and spread (with
    ``unit=True`` instead the pixels divided by 16, from 0..16 to [0, 1], the range
    the units of 10's restricted Boltzmann machines model), and the split stratified
    by class. The data come with scikit-learn: no download.
    """
    test_fraction = number("test_fraction", test_fraction, high=1.0, high_ok=False,
                           allowed="a number in (0, 1)")
    integer("seed", seed, 0)
    if not isinstance(unit, bool):
        raise ValueError(f"unit must be True or False, got {unit!r}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    if unit:
        mean, std = np.zeros(x.shape[1]), np.full(x.shape[1], 16.0)
    else:
        mean, std = xtr.mean(axis=0), xtr.std(axis=0)
        # A pixel that is blank in every training image has no spread: leave it unscaled
        # (dividing by a tiny epsilon would turn a rare test-set stroke into a 1e6 outlier).
        std = np.where(std > 0, std, 1.0)
    as_x = lambda a: torch.tensor((a - mean) / std, dtype=torch.float32, device=device)  # noqa: E731
    as_y = lambda a: torch.tensor(a, dtype=torch.long, device=device)  # noqa: E731
    return (as_x(xtr), as_y(ytr)), (as_x(xte), as_y(yte))


def first_input_recall(
    n: int, lag: int, *, symbols: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Remember the first symbol of a sequence across ``lag`` steps of noise.

    Step 0 carries a one-hot symbol out of ``symbols``; the next ``lag`` steps
    carry distractor symbols drawn from the same alphabet. The label is the
    first symbol, so a model must carry it across the whole lag: chance is
    ``1/symbols``. Returns inputs (n, lag + 1, symbols) and labels (n,).
    """
    integer("n", n, 1)
    integer("lag", lag, 1)
    integer("symbols", symbols, 2)
    g = torch.Generator().manual_seed(integer("seed", seed, 0))
    seq = torch.randint(0, symbols, (n, lag + 1), generator=g)
    inputs = torch.nn.functional.one_hot(seq, symbols).float()
    return inputs, seq[:, 0].clone()
