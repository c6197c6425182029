"""Which CPU kernels the book runs, so that its printed numbers are the same on every x86 CPU.

torch, MKL, oneDNN and NumPy each pick their kernels for the processor they find:
AVX-512 code on one machine, AVX2 code on another. The kernels agree only to
rounding, and a training run of hundreds of steps turns a last-bit difference
into a different network (measured: a chapter's test accuracy 0.80 on one
machine, 0.85 on another). So the book pins one kernel set that every x86-64
CPU with AVX2 and FMA (Intel since 2013, AMD since 2015) runs the same way:

* ``ATEN_CPU_CAPABILITY=avx2``: torch's own vectorized kernels (activations,
  reductions, elementwise arithmetic);
* ``MKL_CBWR=COMPATIBLE``: MKL's matrix products, in its conditional numerical
  reproducibility mode (one code path on every x86 processor, Intel or AMD);
* ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN's kernels (torch runs its LSTM and
  convolutions there);
* ``NPY_DISABLE_CPU_FEATURES=X86_V4 ...``: NumPy's AVX-512 loops (its exp, log,
  tanh and sin differ from its AVX2 loops in the last bit).

Each library reads its variable once, when it first chooses a kernel, so the
values must be in the environment before that: :func:`pin` runs when
``vanishing`` is imported (before it imports NumPy or torch), and the book's
tools put :data:`PINNED` into every kernel's environment. A variable that is
already set is left alone, and ``VANISHING_KERNELS=native`` turns the pin off
(each library then picks the fastest kernels of the machine).

What the pin cannot reach is recorded in :data:`ANOTHER_CPU`: the settings in
which another x86 CPU differs from this one even under the pin (MKL's and
OpenBLAS's instruction-set dispatch, glibc's AVX-512 string routines). The
tests run the chapters a second time with those forced, and the stored outputs
must not change. glibc's maths library has FMA and non-FMA variants that differ
in the last bit; CPUs without FMA (before 2013) are therefore outside the
guarantee, as are other architectures (ARM, GPUs), where the book promises its
conclusions within the printed spread, not its bits.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping

__all__ = [
    "PINNED", "ANOTHER_CPU", "KERNEL_SETS", "KERNELS_ENV", "pin", "environment", "check",
]

#: Environment variable that turns the pin off (``native``) or on (``pinned``, the default).
KERNELS_ENV = "VANISHING_KERNELS"

#: The kernel set the book's stored outputs were computed with.
PINNED: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
}

#: What another x86-64 CPU changes under the pin (an AVX2 machine without AVX-512,
#: OpenBLAS on another core type). Forced on top of :data:`PINNED`, the stored
#: outputs must still reproduce; ``tests/`` and ``tools/check_reproducible.py`` do that.
ANOTHER_CPU: dict[str, str] = {
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "OPENBLAS_CORETYPE": "Haswell",
    "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F,-AVX512BW,-AVX512CD,-AVX512DQ,-AVX512VL",
}

#: The kernel sets a tool can ask for by name (``tools/kernels.py``,
#: ``tools/check_reproducible.py``).
KERNEL_SETS = ("pinned", "another-cpu", "native")

# Modules that had already chosen their kernels when pin() ran (then the pin is too late for them).
_late: list[str] = []


def _pinned(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``environ`` (default: this process's) wants the pin (``VANISHING_KERNELS``
    unset or ``pinned``)."""
    value = (
        (os.environ if environ is None else environ).get(KERNELS_ENV, "pinned").strip().lower()
        or "pinned"
    )
    if value not in ("pinned", "native"):
        raise ValueError(
            f"{KERNELS_ENV}={value!r} is not a kernel choice; allowed: 'pinned', 'native'"
        )
    return value == "pinned"


def pin(environ: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Put :data:`PINNED` into ``environ`` (default: this process's), leaving set variables alone.

    Returns the environment. For a child process (a Jupyter kernel, nbval's
    kernels) pass a copy of ``os.environ``; in this process the pin takes effect
    only for libraries that have not chosen their kernels yet, which is why
    ``vanishing`` calls it before importing NumPy or torch.
    """
    target = os.environ if environ is None else environ
    if _pinned(target):
        if environ is None:  # NumPy read its variable at import: was it there then?
            late = "numpy" in sys.modules and "NPY_DISABLE_CPU_FEATURES" not in os.environ
            _late[:] = ["numpy"] if late else []
        for key, value in PINNED.items():
            target.setdefault(key, value)
    return target


def environment(name: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default: this process's environment) set up for the kernel set ``name``.

    ``pinned``: the book's kernels; ``another-cpu``: the same, with what another
    x86 CPU would change forced (:data:`ANOTHER_CPU`); ``native``: no pin, each
    library picks this machine's fastest kernels.
    """
    if name not in KERNEL_SETS:
        allowed = ", ".join(map(repr, KERNEL_SETS))
        raise ValueError(f"kernel set {name!r} is not known; allowed: {allowed}")
    env = dict(os.environ if base is None else base)
    for key in (*PINNED, *ANOTHER_CPU, KERNELS_ENV):
        env.pop(key, None)
    if name == "native":
        env[KERNELS_ENV] = "native"
        return env
    env.update(PINNED)
    if name == "another-cpu":
        env.update(ANOTHER_CPU)
    return env


def check() -> str | None:
    """Say why this process may not run the book's kernels, or ``None`` when it does.

    torch fixes its kernel set at its first operation; NumPy at its import. If
    either happened before :func:`pin`, or the CPU lacks AVX2, printed numbers
    may differ from the book's in the last digits (and training runs by more).
    """
    if not _pinned():
        return None
    import torch

    wanted = os.environ.get("ATEN_CPU_CAPABILITY", PINNED["ATEN_CPU_CAPABILITY"]).upper()
    got = torch.backends.cpu.get_cpu_capability()
    if got != wanted:
        return (f"torch runs {got} kernels, not the book's {wanted}: torch computed something "
                "before `import vanishing`, or this CPU lacks the instructions")
    if "numpy" in _late:
        return ("NumPy was imported (perhaps by torch) before `import vanishing`, so its AVX-512 "
                "loops are not switched off")
    return None
