"""Shared test configuration: how strict nbval compares the chapters' stored outputs.

Strict mode re-executes every chapter and compares every output. Only what is
inherently unstable is skipped: SVG (embeds dates and random ids) and stderr
(library warnings differ between installs). PNG is skipped by nbval itself.
Addresses and similar noise are rewritten by tests/sanitize.cfg. Every kernel
runs the book's pinned CPU kernels (vanishing.kernels); CI runs the chapters a
second time as another CPU would (``python tools/kernels.py another-cpu ...``).
"""

from __future__ import annotations

import os

import pytest

from vanishing import kernels
from vanishing.runtime import QUIET_ENV

# An inherited Agg backend makes plt.show() emit nothing, so figures would vanish
# from the re-executed notebooks; kernels inherit this process's environment.
os.environ.pop("MPLBACKEND", None)
# The chapters' kernels run the book's CPU kernel set (importing vanishing pinned it
# for this process; a set chosen from outside, as by tools/kernels.py, is kept).
kernels.pin()
# No progress bars in the chapters' kernels: nothing of them may reach a compared output.
os.environ[QUIET_ENV] = "1"


def pytest_addoption(parser):
    parser.addoption(
        "--learner-chapters", default=None, metavar="all|NAME,NAME",
        help="tests/test_learner.py: the chapters run in JupyterLab and as downloaded notebooks; "
             "'all' (slow) or chapter names, comma-separated (default: the shortest, 03_dynamical_system)",
    )


def pytest_collectstart(collector):
    if getattr(collector, "fspath", None) is not None and collector.fspath.ext == ".ipynb":
        collector.skip_compare = (*collector.skip_compare, "image/svg+xml", "stderr")


@pytest.fixture(scope="module")
def one_thread():
    """Run a test module's tiny tensors on one thread: OpenMP hand-offs would dominate (vg.seed does the same)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
