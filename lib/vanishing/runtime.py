"""Where and how big a run is, and how to make it repeatable: seed, device, scale.

Three settings every chapter makes in its setup cell, each readable from the
environment so that one notebook serves a laptop, Binder and a GPU:

* :func:`seed` - seed Python, NumPy and torch, one CPU thread, deterministic kernels;
* :func:`device` - CUDA, then Apple MPS, then the CPU (``VANISHING_DEVICE`` forces one);
* :func:`scale` - ``"small"`` (laptop, Binder, CI) or ``"full"`` (``VANISHING_SCALE``).

The library's training loops also show a learner :func:`progress` through long
cells, and only a learner: in a notebook opened in Jupyter's interface, or at a
terminal; never in the book's own runs, whose outputs are stored and compared.
"""

from __future__ import annotations

import os
import random
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch

from . import kernels
from .checks import integer

__all__ = [
    "seed", "device", "scale", "progress", "SCALES", "DEVICE_ENV", "SCALE_ENV", "THREADS_ENV",
    "QUIET_ENV",
]

#: Environment variable that forces a device (``cpu``, ``cuda``, ``cuda:1``, ``mps``).
DEVICE_ENV = "VANISHING_DEVICE"
#: Environment variable that selects the experiment size.
SCALE_ENV = "VANISHING_SCALE"
#: Environment variable that sets torch's CPU thread count (default 1, for identical outputs).
THREADS_ENV = "VANISHING_THREADS"
#: Environment variable for progress bars: ``1`` silences them (the book's own runs set it, so that
#: no bar ever enters a stored output), ``0`` forces them on.
QUIET_ENV = "VANISHING_QUIET"
#: The experiment sizes a chapter knows.
SCALES = ("small", "full")


def seed(value: int = 0) -> None:
    """Seed every random number generator the book uses and make kernels deterministic.

    Also pins torch to one CPU thread (override with ``VANISHING_THREADS``):
    the order of floating-point reductions then no longer depends on the
    machine, so stored notebook outputs reproduce bit for bit.
    """
    integer("seed: value", value, 0, 2**32 - 1)
    threads = os.environ.get(THREADS_ENV, "1")
    if not threads.isdigit() or int(threads) < 1:
        raise ValueError(f"{THREADS_ENV} must be a positive integer, got {threads!r}")
    torch.set_num_threads(int(threads))
    problem = kernels.check()
    if problem is not None:
        warnings.warn(f"{problem}; numbers may differ from the book's stored outputs "
                      "(import vanishing first, in a fresh kernel)", RuntimeWarning, stacklevel=2)
    # cuBLAS needs this set before its first call to be deterministic.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)  # also seeds every CUDA device
    if torch.cuda.is_available():
        # CPU kernels are deterministic on one thread; on CUDA some are not unless asked.
        # (Only here: the switch imports torch's compiler stack, which costs seconds.)
        torch.use_deterministic_algorithms(True, warn_only=True)
    if hasattr(torch.backends, "cudnn"):
        torch.backends.cudnn.benchmark = False


def _available(kind: str) -> bool:
    if kind == "cpu":
        return True
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    return False


def device(name: str | None = None) -> torch.device:
    """Return the device experiments run on.

    ``name`` (or the ``VANISHING_DEVICE`` environment variable) asks for one
    explicitly; asking for a device this machine lacks is an error, never a
    silent fallback to the CPU. Without a request: CUDA, then MPS, then CPU.
    """
    source = "name"
    if name is None:
        name = os.environ.get(DEVICE_ENV) or None
        source = DEVICE_ENV
    if name is None:
        for kind in ("cuda", "mps"):
            if _available(kind):
                return torch.device(kind)
        return torch.device("cpu")
    if not isinstance(name, str):
        raise ValueError(
            f"device: {source} must be a string such as 'cpu', 'cuda' or 'mps', got {name!r}"
        )
    text = name.strip().lower()
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()):
        raise ValueError(
            f"device: {source}={name!r} is not a device; allowed: 'cpu', 'cuda', 'cuda:N', 'mps'"
        )
    if not _available(kind):
        raise ValueError(
            f"device: {source}={name!r} was requested but this machine has no {kind} device"
        )
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ValueError(
            f"device: {source}={name!r} was requested but only {torch.cuda.device_count()} "
            "CUDA device(s) exist"
        )
    return torch.device(text)


def scale() -> str:
    """Return the experiment size: ``"small"`` (default) or ``"full"`` from ``VANISHING_SCALE``."""
    value = os.environ.get(SCALE_ENV, "small").strip().lower() or "small"
    if value not in SCALES:
        raise ValueError(f"{SCALE_ENV}={value!r} is not a scale; allowed: {', '.join(SCALES)}")
    return value


T = TypeVar("T")


def progress(items: Iterable[T], *, total: int | None = None, desc: str | None = None
             ) -> Iterable[T]:
    """``items``, with a text progress bar on stderr while they are consumed, for a learner
    waiting on a long cell.

    The bar (``tqdm``) updates at most once a second and erases itself when done
    (``leave=False``), so a notebook keeps no trace of it. It is shown where a person watches:
    in a kernel that Jupyter's interface started for a notebook (JupyterLab, Notebook, Binder:
    the server sets ``JPY_SESSION_NAME``) or when stderr is a terminal. A notebook executed by a
    program (nbclient: the build, nbval, ``tools/execute.py``) shows nothing. ``VANISHING_QUIET``
    overrides: ``1`` never, ``0`` always. Without ``tqdm``, ``items`` comes back as it is.
    """
    flag = os.environ.get(QUIET_ENV, "")
    watched = bool(os.environ.get("JPY_SESSION_NAME")) or sys.stderr.isatty()
    if flag == "1" or (flag != "0" and not watched):
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return _bar(tqdm(items, total=total, desc=desc, leave=False, mininterval=1.0,
                     file=sys.stderr, dynamic_ncols=True))


def _bar(bar: Iterable[T]) -> Iterator[T]:
    # a generator, so that a loop left early (a diverged run) still closes and erases the bar
    try:
        yield from bar
    finally:
        bar.close()  # type: ignore[attr-defined]
