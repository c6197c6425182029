"""The learner's path, walked the way a learner walks it.

Two tests, each on copies of the chapters in a temporary folder (the committed
notebooks and their stored outputs are never touched):

- ``test_chapter_runs_in_jupyterlab``: JupyterLab, as the README's laptop path
  starts it, serving on loopback with a token; Debian's Chromium, driven by
  Playwright, opens a chapter, accepts the kernel JupyterLab offers, chooses
  Kernel > "Restart Kernel and Run All Cells", confirms, waits, and saves. Every
  code cell must have run with no error output, every figure the chapter
  stores must have been drawn again and decoded by the browser, and the server
  and its kernel together must have stayed under Binder's 2 GB.
- ``test_downloaded_notebook_installs_the_library``: the ``.ipynb`` the site's
  download button gives, executed alone in a fresh environment that holds the
  pinned requirements but neither the library nor the repository, so its setup
  cell's install guard must run its own ``%pip install`` command (see the test's
  docstring for what is substituted for the network, and why).

By default (the README's test command, CI) both run the shortest chapter
(03_dynamical_system, about 10 s at ``small`` scale). The slower check, kept out
of the default run, walks every chapter both ways (the sum of all chapters'
times, twice: the README's table of chapter times sums to 629 s)::

    python -m pytest tests/test_learner.py --learner-chapters all

(``--learner-chapters 05_activations,08_residual`` picks chapters by name.)
Nothing here reaches the network: JupyterLab's news, update check and extension
manager are switched off, and the browser aborts, and the test reports, any
request that is not to the local server (tools/learner_ui.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import learner_ui  # noqa: E402  (tools/ is not a package)

sys.path.pop(0)
# The `jupyter` command the install puts beside this Python (the one the README tells a learner to type).
JUPYTER = str(Path(sys.executable).parent / "jupyter")
# The shortest chapter at small scale (README, Measurements: 8.9 s alone), with figures.
SHORTEST = "03_dynamical_system"
RUN_SECONDS = 900  # one chapter's "run all", generous for a loaded machine (the budget alone is 60 s)
BINDER_MB = 2048  # Binder's memory limit, for the server and its kernel together


def pytest_generate_tests(metafunc):
    """The chapters to walk: ``--learner-chapters`` (tests/conftest.py), by default the shortest one."""
    if "chapter" not in metafunc.fixturenames:
        return
    every = sorted(p.stem for p in (ROOT / "chapters").glob("*.ipynb"))
    wanted = metafunc.config.getoption("--learner-chapters", default=None) or SHORTEST
    chapters = every if wanted == "all" else [name.strip() for name in wanted.split(",") if name.strip()]
    unknown = sorted(set(chapters) - set(every))
    if unknown:
        raise ValueError(f"--learner-chapters: no such chapter {unknown}; allowed: 'all' or names from {every}")
    metafunc.parametrize("chapter", chapters)


def _stripped_copy(chapter: str, folder: Path) -> Path:
    """Copy a chapter without its outputs, so that every output the test sees is one this run made."""
    nb = nbformat.read(ROOT / "chapters" / f"{chapter}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    path = folder / f"{chapter}.ipynb"
    nbformat.write(nb, path)
    return path


def _figures(path: Path) -> int:
    """How many figures (PNG outputs) a notebook holds."""
    nb = nbformat.read(path, as_version=4)
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


# ---------------------------------------------------------------------------------------------
# JupyterLab in Chromium (tools/learner_ui.py drives it)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    server = learner_ui.Lab(tmp_path_factory.mktemp("lab"), jupyter=JUPYTER)
    try:
        server.start()
        news = server.api("/lab/api/news")
        assert news == {"news": []}, f"JupyterLab would fetch news from the network: {news}"
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = learner_ui.chromium(p)
        yield b
        b.close()


def test_chapter_runs_in_jupyterlab(lab, browser, chapter):
    path = _stripped_copy(chapter, lab.notebooks)
    stored_figures = _figures(ROOT / "chapters" / f"{chapter}.ipynb")
    peak = learner_ui.PeakMemory(lab)
    walk = learner_ui.run_all(browser, lab, path.name, RUN_SECONDS, every_poll=peak)
    print(f"{chapter}: Restart Kernel and Run All Cells took {walk.seconds:.1f} s in JupyterLab; "
          f"server and kernel peaked at {peak.total:.0f} MB")

    # What the kernel produced: saved through the UI (File > Save Notebook), read back from disk.
    assert not learner_ui.problems(path), f"{chapter} in JupyterLab:\n" + "\n".join(learner_ui.problems(path))
    assert _figures(path) == stored_figures, f"{chapter}: {_figures(path)} figures saved, {stored_figures} stored"
    # What the learner sees: every figure drawn and decoded by the browser.
    assert len(walk.images) == stored_figures, f"{chapter}: {len(walk.images)} figures shown in JupyterLab, {stored_figures} stored"
    assert all(walk.images), f"{chapter}: {walk.images.count(False)} of {len(walk.images)} figures did not render in JupyterLab"
    assert not walk.outside, f"JupyterLab tried to reach the network: {walk.outside}"
    assert not walk.errors, f"console errors in JupyterLab running {chapter}: {walk.errors}"
    # What Binder would allow: the server and the chapter's kernel together.
    assert 0 < peak.total < BINDER_MB, f"{chapter}: JupyterLab and its kernel peaked at {peak.total:.0f} MB (Binder: {BINDER_MB} MB)"


# ---------------------------------------------------------------------------------------------
# The downloaded notebook, alone, in an environment without the library

GUARD = re.compile(r'%pip install [^\n]*"vanishing @ git\+(?P<url>[^"@#\s]+)"')
ENV_SITE = Path("lib") / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _downloaded(chapter: str) -> Path:
    """The .ipynb the site's download button serves (tests/test_site.py checks the button); the chapter itself before a build."""
    built = ROOT / "_build" / "html" / "_sources" / "chapters" / f"{chapter}.ipynb"
    return built if built.exists() else ROOT / "chapters" / f"{chapter}.ipynb"


def _git(*args: str, cwd: Path) -> str:
    env = dict(os.environ, GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
    done = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> tuple[Path, str]:
    """A local git repository holding this checkout's tracked files as they are now; returns (path, commit)."""
    if shutil.which("git") is None:
        pytest.fail("git is required: the setup cell installs the library from a git URL", pytrace=False)
    path = tmp_path_factory.mktemp("mirror")
    for name in _git("ls-files", "-z", cwd=ROOT).split("\0"):
        if name and (ROOT / name).is_file():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, path / name)
    _git("init", "--quiet", cwd=path)
    _git("add", "--all", cwd=path)
    _git("-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "--quiet", "-m", "snapshot", cwd=path)
    return path, _git("rev-parse", "HEAD", cwd=path)


def _fresh_environment(home: Path) -> Path:
    """A new virtual environment holding the installed pinned requirements, but not the library; returns its python.

    The packages are this environment's own installed files (the README's install,
    requirements.txt at constraints.txt's versions), reached through a path entry
    outside the new environment, which pip never uninstalls from; the library's
    entries (its dist-info, its editable-install hook) are left out, and so are all
    .pth files, so nothing points back at the repository.
    """
    env = home / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    pinned = home / "pinned"
    pinned.mkdir()
    site = Path(nbformat.__file__).resolve().parent.parent
    for entry in site.iterdir():
        if entry.suffix == ".pth" or entry.name.lower().startswith(("vanishing", "__editable__")):
            continue
        (pinned / entry.name).symlink_to(entry)
    (env / ENV_SITE / "book-requirements.pth").write_text(f"{pinned}\n")
    return env / "bin" / "python"


def _learner_env(home: Path, python: Path, url: str, mirror_path: Path) -> dict[str, str]:
    """The kernel's environment: nothing of the repository or its venv, and what replaces the network.

    - git fetches the setup cell's URL from the local mirror (git's own url.<base>.insteadOf
      rewriting, set through environment variables: pip runs git unchanged);
    - pip reads no configuration and no package index (PIP_NO_INDEX): everything the
      library needs is already installed, so an attempt to download anything fails;
    - pip builds the library with the environment's setuptools (pinned in requirements.txt)
      instead of fetching one into an isolated build environment, the one download pip
      would otherwise need and cannot make offline.
    """
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("PIP_", "GIT_", "JUPYTER"))}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([str(python.parent)] + [p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin])
    # PIP_NO_BUILD_ISOLATION="0" means --no-build-isolation: pip reads a false value of a --no-* option's
    # variable as the option given (pypa/pip#5735); with isolation on, this offline install would fail.
    env.update(
        HOME=str(home / "home"), PYTHONNOUSERSITE="1", MPLCONFIGDIR=str(home / "mpl"),
        GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0",
        GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0=f"url.{mirror_path.as_uri()}.insteadOf", GIT_CONFIG_VALUE_0=url,
        PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    (home / "home").mkdir(exist_ok=True)
    return env


def test_downloaded_notebook_installs_the_library(mirror, tmp_path, chapter):
    """The downloaded notebook, alone in a fresh environment, installs the library by its own setup cell and runs.

    What is real: the notebook file as the site serves it, executed top to bottom in
    a folder holding nothing else, by a kernel of a new virtual environment where
    ``import vanishing`` fails; the setup cell's guard then runs its own ``%pip
    install`` line, unchanged, which clones the git URL written in the cell, builds
    the library from that clone and installs it; the rest of the chapter runs on
    that installed copy. What stands in for the network (none in CI): git serves
    the URL from a local mirror of this checkout, and pip uses the environment's
    setuptools to build instead of downloading one. Not checked here: that GitHub
    and PyPI answer (tests/test_site.py checks the launch buttons' URLs).
    """
    mirror_path, commit = mirror
    source = _downloaded(chapter)
    nb = nbformat.read(source, as_version=4)
    setup = next(c for c in nb.cells if c.cell_type == "code").source
    match = GUARD.search(setup)
    assert match and "except ModuleNotFoundError" in setup, f"{chapter}: the setup cell has no install guard:\n{setup}"
    url = match["url"]

    python = _fresh_environment(tmp_path)
    env = _learner_env(tmp_path, python, url, mirror_path)
    probe = subprocess.run([python, "-c", "import ipykernel, matplotlib, torch, sympy, scipy, sklearn, numpy\nimport vanishing"],
                           env=env, cwd=tmp_path, capture_output=True, text=True)
    assert "No module named 'vanishing'" in probe.stderr, f"the fresh environment is not what the test needs:\n{probe.stderr}"

    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    kernels = tmp_path / "kernels" / "learner"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "learner", "language": "python",
    }))
    km = KernelManager(kernel_name="learner", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]))
    workdir = tmp_path / "download"
    workdir.mkdir()
    notebook = workdir / f"{chapter}.ipynb"
    shutil.copy(source, notebook)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    start = time.monotonic()
    try:
        NotebookClient(nb, km=km, timeout=RUN_SECONDS, allow_errors=True,
                       resources={"metadata": {"path": str(workdir)}}).execute(env=env, cwd=str(workdir))
    finally:
        nbformat.write(nb, notebook)
    print(f"{chapter}: the downloaded notebook, library installed by its setup cell, ran in {time.monotonic() - start:.1f} s")

    assert not learner_ui.problems(notebook), f"{chapter}, downloaded and run alone:\n" + "\n".join(learner_ui.problems(notebook))
    assert _figures(notebook) == _figures(source), f"{chapter}: {_figures(notebook)} figures drawn, {_figures(source)} stored"
    installed = list((python.parent.parent / ENV_SITE).glob("vanishing-*.dist-info"))
    assert len(installed) == 1, "the setup cell did not install the library into the fresh environment"
    origin = json.loads((installed[0] / "direct_url.json").read_text())
    assert origin.get("url") == url and origin.get("vcs_info", {}).get("commit_id") == commit, (
        f"the library was not installed from the setup cell's URL at the mirror's commit: {origin}")
