"""One small training loop that every chapter shares, returning a plain history.

The loop is deliberately ordinary - cross-entropy, minibatch SGD (with or without
momentum) or Adam, an optional gradient-norm clip - so that what changes between
experiments is the model, never the training procedure.
"""

from __future__ import annotations

import torch
from torch import nn

from .checks import choice, integer, module, number
from .probes import weight_names
from .runtime import progress

__all__ = ["OPTIMIZERS", "Diverged", "train", "accuracy", "draw_batch"]

#: Optimizer names :func:`train` accepts: plain SGD, SGD with momentum 0.9, Adam.
OPTIMIZERS = ("sgd", "momentum", "adam")


class Diverged(FloatingPointError):
    """:func:`train`'s error when the loss on a minibatch is no longer finite.

    ``step`` is that step and ``history`` the record up to the evaluation before it, so a
    sweep that trains many networks can keep a diverged network's record and go on.
    """

    def __init__(self, message: str, step: int, history: dict[str, list]) -> None:
        super().__init__(message)
        self.step = step
        self.history = history

    def __reduce__(self) -> tuple:
        # pickled with its step and record (for a sweep run in worker processes), and with
        # whatever else it carries, such as notes added on the way up
        return type(self), (self.args[0], self.step, self.history), self.__dict__


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of rows whose largest logit is at the target class."""
    return float((logits.argmax(dim=-1) == targets).float().mean())


def _check_schedule(
    *, steps: object, eval_every: object, lr: object, optimizer: object, allowed: tuple[str, ...],
    clip: object, batch_size: object, n: int,
) -> None:
    """Validate the arguments every training loop of the library shares, naming the bad one."""
    for name, value in (("steps", steps), ("eval_every", eval_every)):
        integer(name, value)
    number("lr", lr)
    choice("optimizer", optimizer, allowed)
    if clip is not None:
        number("clip", clip, allowed="a positive number or None")
    if batch_size is not None:
        integer("batch_size", batch_size, 1, n)


def draw_batch(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int | None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One minibatch drawn with replacement (indices drawn on the CPU, so a seeded CPU generator
    gives the same batches on every device); ``batch_size=None`` returns the whole set."""
    if batch_size is None:
        return inputs, targets
    idx = torch.randint(
        0, len(inputs), (batch_size,), generator=generator, device="cpu"
    ).to(inputs.device)
    return inputs[idx], targets[idx]


def _optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    return torch.optim.Adam(params, lr=lr)


def train(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    steps: int,
    lr: float,
    batch_size: int | None = 64,
    optimizer: str = "sgd",
    test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    eval_every: int = 10,
    clip: float | None = None,
    record_grad_norms: bool = False,
    generator: torch.Generator | None = None,
) -> dict[str, list]:
    """Train ``model`` on ``data = (inputs, targets)`` (class indices) for ``steps`` updates of
    the cross-entropy with ``optimizer`` (one of :data:`OPTIMIZERS`; ``"momentum"`` is SGD with
    momentum 0.9).

    ``batch_size=None`` uses the whole set each step (full-batch). Minibatches
    are drawn with ``generator`` (or torch's global generator, seeded by
    :func:`vanishing.seed`). Every ``eval_every`` steps the history records the
    step, the training loss and accuracy on all of ``data`` and, if given,
    on ``test_data``; with ``record_grad_norms`` also the gradient norm of each
    weight matrix on that step's batch. ``clip`` rescales the whole gradient to
    at most that norm (Pascanu et al. 2013).

    Returns a dict of lists: ``step``, ``loss``, ``acc``, ``test_loss`` and ``test_acc``
    (with ``test_data``) and ``grad_norms`` (a list of dicts) when recorded.
    A loss that stops being finite raises :class:`Diverged` (a ``FloatingPointError``).
    """
    module(model)
    for name, pair in (("data", data), ("test_data", test_data)):
        if pair is None and name == "test_data":
            continue
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"{name} must be a pair (inputs, targets)")
        x, y = pair
        if not (isinstance(y, torch.Tensor) and y.dim() == 1 and y.dtype == torch.long):
            raise ValueError(f"{name}: targets must be class indices, a tensor of shape (batch,) "
                             "and dtype long (the loss is cross-entropy)")
        if len(x) != len(y):
            raise ValueError(f"{name}: {len(x)} inputs but {len(y)} targets")
    inputs, targets = data
    n = len(inputs)
    _check_schedule(steps=steps, eval_every=eval_every, lr=lr, optimizer=optimizer,
                    allowed=OPTIMIZERS, clip=clip, batch_size=batch_size, n=n)
    loss_fn = nn.functional.cross_entropy

    opt = _optimizer(optimizer, model.parameters(), lr)
    names = weight_names(model)
    params = dict(model.named_parameters())
    history: dict[str, list] = {"step": [], "loss": [], "acc": []}
    if test_data is not None:
        history["test_loss"], history["test_acc"] = [], []
    if record_grad_norms:
        history["grad_norms"] = []

    def evaluate(step: int, batch_norms: dict[str, float] | None) -> None:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            sets = [("", (inputs, targets))] + (
                [("test_", test_data)] if test_data is not None else []
            )
            for prefix, (x, y) in sets:
                out = model(x)
                history[prefix + "loss"].append(float(loss_fn(out, y)))
                history[prefix + "acc"].append(accuracy(out, y))
        model.train(was_training)
        history["step"].append(step)
        if record_grad_norms:
            history["grad_norms"].append(batch_norms)

    model.train()
    for step in progress(range(1, steps + 1), desc="training"):
        x, y = draw_batch(inputs, targets, batch_size, generator)
        opt.zero_grad(set_to_none=True)
        value = loss_fn(model(x), y)
        if not torch.isfinite(value):
            raise Diverged(
                f"train: the loss became {value.item()} at step {step}; lower lr or clip",
                step, history,
            )
        value.backward()
        batch_norms = None
        if record_grad_norms and (step % eval_every == 0 or step == 1):
            # float64 norm: squares of float32 gradients below ~1e-19 would underflow to zero.
            batch_norms = {
                k: float(g.double().norm()) if (g := params[k].grad) is not None else 0.0
                for k in names
            }
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if step % eval_every == 0 or step == 1:
            evaluate(step, batch_norms)
    return history
