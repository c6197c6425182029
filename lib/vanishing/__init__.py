"""Vanishing Gradients: the shared library behind the book's chapters.

A notebook needs only three entry points from here, re-exported from
:mod:`vanishing.runtime`:

* :func:`seed` makes a run repeatable (Python, NumPy and torch, deterministic kernels);
* :func:`device` picks where tensors live (CUDA, then Apple MPS, then CPU);
* :func:`scale` says how big the experiments are (``"small"`` for a laptop or
  Binder, ``"full"`` for paper-sized runs on a GPU).

Importing the package first pins the CPU kernels NumPy and torch use
(:mod:`vanishing.kernels`), so that printed numbers agree on every x86 CPU.
The machinery lives in submodules, one idea each: :mod:`vanishing.models`
(builders and the sources' initializers), :mod:`vanishing.probes` (the
measurement core: each layer's forward signal, backward signal and weight
gradient, kept apart, on any ``nn.Module``), :mod:`vanishing.train` (a small
training loop), :mod:`vanishing.seeds` (medians and spreads over seeds),
:mod:`vanishing.data` (tasks), :mod:`vanishing.recurrent` (sequence models) and
:mod:`vanishing.plots` (the book's figure style), with :mod:`vanishing.checks` the one
integer check they all use on their arguments. The chapters add one module
each for their own machinery: :mod:`vanishing.precision` (number formats: where a
shrinking product underflows, and what a format does on hardware),
:mod:`vanishing.jacobians` and :mod:`vanishing.dynamics` (the prototypical
models), :mod:`vanishing.sweeps` (many networks trained at once as stacked
tensors), :mod:`vanishing.rbm` and :mod:`vanishing.hierarchy` (pretraining and
history compression) and :mod:`vanishing.search` (gradient-free search).

:mod:`vanishing.checkup` diagnoses the gradient flow of any PyTorch model:
``vg.checkup.checkup(model, (inputs, targets), loss_fn)``; :mod:`vanishing.monitor`
reads the same verdicts from the live gradients while it trains.
"""

from __future__ import annotations

# First, before NumPy or torch choose their CPU kernels: the book's kernel set
# (see vanishing.kernels), so that printed numbers agree on every x86 CPU.
from . import kernels

kernels.pin()

from . import checkup  # noqa: E402  # the book's diagnosis tool, reachable as vg.checkup.checkup
from .runtime import DEVICE_ENV, SCALE_ENV, SCALES, THREADS_ENV, device, scale, seed  # noqa: E402

__all__ = [
    "checkup", "kernels", "seed", "device", "scale", "SCALES",
    "DEVICE_ENV", "SCALE_ENV", "THREADS_ENV",
]
__version__ = "0.1.0"
