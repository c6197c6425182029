"""The book's CPU kernel pin (vanishing.kernels): what it sets, when it takes effect, and what it refuses."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from vanishing import kernels


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_pinned_environment_holds_the_book_kernels_and_nothing_of_another_cpu():
    env = kernels.environment("pinned", {"ATEN_CPU_CAPABILITY": "avx512", "OPENBLAS_CORETYPE": "Zen", "PATH": "/bin"})
    assert {k: env[k] for k in kernels.PINNED} == kernels.PINNED
    assert "OPENBLAS_CORETYPE" not in env and env["PATH"] == "/bin"


def test_another_cpu_adds_only_what_a_cpu_changes_under_the_pin():
    env = kernels.environment("another-cpu", {})
    assert env == {**kernels.PINNED, **kernels.ANOTHER_CPU}
    assert not set(kernels.PINNED) & set(kernels.ANOTHER_CPU)


def test_native_turns_the_pin_off():
    env = kernels.environment("native", {"MKL_CBWR": "COMPATIBLE"})
    assert env == {kernels.KERNELS_ENV: "native"}
    assert kernels.pin(dict(env)) == env  # pin() respects the choice


def test_unknown_kernel_set_and_bad_switch_are_named():
    with pytest.raises(ValueError, match="allowed: 'pinned', 'another-cpu', 'native'"):
        kernels.environment("avx512")
    env = dict(os.environ)
    env[kernels.KERNELS_ENV] = "fast"
    out = _run("import vanishing", env)
    assert out.returncode != 0 and "VANISHING_KERNELS='fast'" in out.stderr and "'pinned', 'native'" in out.stderr


def test_pin_leaves_variables_that_are_already_set():
    env = kernels.pin({"ATEN_CPU_CAPABILITY": "default"})
    assert env["ATEN_CPU_CAPABILITY"] == "default" and env["MKL_CBWR"] == kernels.PINNED["MKL_CBWR"]


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"), reason="needs an AVX2 CPU")
def test_importing_vanishing_first_runs_the_pinned_kernels_and_seed_stays_quiet():
    env = kernels.environment("native", dict(os.environ))
    env.pop(kernels.KERNELS_ENV)  # as a learner's fresh kernel: nothing set
    out = _run("import vanishing as vg, torch, os; vg.seed(0); "
               "print(torch.backends.cpu.get_cpu_capability(), os.environ['MKL_CBWR'])", env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["AVX2", "COMPATIBLE"] and "RuntimeWarning" not in out.stderr


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"), reason="needs an AVX2 CPU")
def test_seed_warns_when_torch_chose_its_kernels_before_the_pin():
    env = kernels.environment("native", dict(os.environ))
    env.pop(kernels.KERNELS_ENV)
    env["ATEN_CPU_CAPABILITY"] = "default"  # stands for "whatever torch picked before vanishing came"
    out = _run("import torch; torch.ones(2).sum(); import os; os.environ['ATEN_CPU_CAPABILITY'] = 'avx2'; "
               "import vanishing as vg; vg.seed(0)", env)
    assert out.returncode == 0, out.stderr
    assert "RuntimeWarning: torch runs DEFAULT kernels, not the book's AVX2" in out.stderr


def test_seed_warns_when_numpy_came_first():
    env = kernels.environment("native", dict(os.environ))
    env.pop(kernels.KERNELS_ENV)
    out = _run("import numpy; import vanishing as vg; vg.seed(0)", env)
    assert out.returncode == 0, out.stderr
    assert "NumPy was imported (perhaps by torch) before `import vanishing`" in out.stderr
