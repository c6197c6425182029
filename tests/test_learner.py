"""The learner's path, walked the way a learner walks it.

Two tests, each on copies of the chapters in a temporary folder (the committed
notebooks and their stored outputs are never touched):

- ``test_chapter_runs_in_jupyterlab``: JupyterLab, as the README's laptop path
  starts it, serving on loopback with a token; Debian's Chromium, driven by
  Playwright, opens a chapter, accepts the kernel JupyterLab offers, chooses
  Kernel > "Restart Kernel and Run All Cells", confirms, waits, and saves. Every
  code cell must have run with no error output, and every figure the chapter
  stores must have been drawn again and decoded by the browser.
- ``test_downloaded_notebook_installs_the_library``: the ``.ipynb`` the site's
  download button gives, executed alone in a fresh environment that holds the
  pinned requirements but neither the library nor the repository, so its setup
  cell's install guard must run its own ``%pip install`` command (see the test's
  docstring for what is substituted for the network, and why).

By default (the README's test command, CI) both run the shortest chapter
(03_dynamical_system, about 8 s at ``small`` scale). The slower check, kept out
of the default run, walks every chapter both ways (the sum of all chapters'
times, twice: the README's table of chapter times sums to 482 s)::

    python -m pytest tests/test_learner.py --learner-chapters all

(``--learner-chapters 05_activations,08_residual`` picks chapters by name.) Nothing here reaches the network: JupyterLab's news,
update check and extension manager are switched off, and the browser aborts, and
the test reports, any request that is not to the local server.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
# The `jupyter` command the install puts beside this Python (the one the README tells a learner to type).
JUPYTER = str(Path(sys.executable).parent / "jupyter")
# The shortest chapter at small scale (README, Measurements: 7.9 s alone), with figures.
SHORTEST = "03_dynamical_system"


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

RUN_SECONDS = 900  # one chapter's "run all", generous for a loaded machine (the budget alone is 60 s)
SERVER_START_SECONDS = 120
SHUTDOWN_SECONDS = 30


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


def _ran(path: Path) -> bool:
    """Whether the first code cell of a notebook on disk has run (it has been saved since it ran)."""
    nb = nbformat.read(path, as_version=4)
    return next(c for c in nb.cells if c.cell_type == "code").execution_count is not None


def _problems(path: Path) -> list[str]:
    """Code cells of an executed notebook that did not run or raised, each with its first line."""
    nb = nbformat.read(path, as_version=4)
    found = []
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        head = cell.source.splitlines()[0] if cell.source else ""
        if cell.execution_count is None:
            found.append(f"code cell {i + 1} did not run: {head}")
        for out in cell.outputs:
            if out.output_type == "error":
                found.append(f"code cell {i + 1} raised {out.ename}: {out.evalue} ({head})")
    return found


# ---------------------------------------------------------------------------------------------
# JupyterLab in Chromium


class Lab:
    """A JupyterLab server on 127.0.0.1 with a random token, isolated from the user's Jupyter setup."""

    def __init__(self, home: Path):
        self.home = home
        self.notebooks = home / "notebooks"
        self.notebooks.mkdir()
        self.token = secrets.token_hex(24)
        self.log = home / "server.log"
        config, settings = home / "config", home / "settings" / "@jupyterlab" / "apputils-extension"
        config.mkdir()
        settings.mkdir(parents=True)
        # Server side: no news feed, no update check, an extension manager that never asks PyPI.
        (config / "jupyter_server_config.json").write_text(json.dumps({
            "LabApp": {"news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
                       "extension_manager": "readonly"},
        }))
        # Browser side: do not ask whether to fetch news (a toast that would cover the notebook).
        (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        self.env = dict(
            os.environ,
            JUPYTER_CONFIG_DIR=str(config), JUPYTER_DATA_DIR=str(home / "data"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
            JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
        )
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> None:
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                # The README's laptop path, `jupyter lab chapters/`, with what a test needs added: no browser of its
                # own, loopback, a free port, a known token.
                [JUPYTER, "lab", str(self.notebooks), "--no-browser", "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0",
                 f"--IdentityProvider.token={self.token}", "--ServerApp.allow_root=True", "--ServerApp.terminals_enabled=False"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + SERVER_START_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}", pytrace=False)
            info = list((self.home / "runtime").glob("jpserver-*.json"))
            if info:
                self.url = json.loads(info[0].read_text())["url"].rstrip("/")
                return
            time.sleep(0.2)
        pytest.fail(f"JupyterLab did not start in {SERVER_START_SECONDS} s:\n{self.log.read_text()[-3000:]}", pytrace=False)

    def api(self, path: str, method: str = "GET") -> object:
        request = urllib.request.Request(f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def stop_kernels(self) -> None:
        """End every session and its kernel (one chapter's kernel holds up to 600 MB)."""
        for session in self.api("/api/sessions"):
            self.api(f"/api/sessions/{session['id']}", method="DELETE")

    def stop(self) -> None:
        """Ask the server to shut down (it ends its kernels); then SIGTERM, then SIGKILL, each bounded."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.api("/api/shutdown", method="POST")
            self.proc.wait(SHUTDOWN_SECONDS)
            return
        except Exception:
            pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(10)
                return
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    server = Lab(tmp_path_factory.mktemp("lab"))
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
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package", pytrace=False)
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        yield b
        b.close()


def _wait(page, predicate, seconds: float, what: str, on_dialog=None) -> None:
    """Poll the page until predicate() holds; accept a dialog with on_dialog meanwhile, if given."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if on_dialog is not None and page.locator(".jp-Dialog").count():
            on_dialog(page.locator(".jp-Dialog"))
        if predicate():
            return
        page.wait_for_timeout(500)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


PROMPTS = "() => Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')).map(e => e.textContent.trim())"


def test_chapter_runs_in_jupyterlab(lab, browser, chapter):
    path = _stripped_copy(chapter, lab.notebooks)
    stored_figures = _figures(ROOT / "chapters" / f"{chapter}.ipynb")
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    outside, errors = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"Uncaught {e}"))

    def route(r):
        if r.request.url.startswith((lab.url, "data:", "blob:")):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    try:
        page.goto(f"{lab.url}/lab/tree/{path.name}?token={lab.token}")
        indicator = page.locator(".jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator")
        kernel_name = page.locator(".jp-NotebookPanel-toolbar .jp-KernelName")

        def pick_kernel(dialog):
            # JupyterLab asks which kernel to start, offering the notebook's own (Python 3): a learner clicks "Select".
            assert "Select Kernel" in dialog.inner_text(), f"unexpected dialog: {dialog.inner_text()}"
            dialog.locator("button.jp-mod-accept").click()

        _wait(page, lambda: kernel_name.count() and "Python 3" in kernel_name.inner_text()
              and indicator.get_attribute("data-status") == "idle",
              SERVER_START_SECONDS, "the notebook to open with an idle Python 3 kernel", on_dialog=pick_kernel)

        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Kernel$")).click()
        page.locator(".lm-Menu-itemLabel", has_text="Restart Kernel and Run All Cells").click()
        dialog = page.locator(".jp-Dialog")
        dialog.wait_for(timeout=30_000)
        assert "Restart" in dialog.inner_text(), f"unexpected dialog: {dialog.inner_text()}"
        dialog.locator("button.jp-mod-accept").click()
        start = time.monotonic()

        def finished():
            prompts = page.evaluate(PROMPTS)
            return (prompts and re.fullmatch(r"\[\d+\]:", prompts[0]) and not any("*" in p for p in prompts)
                    and indicator.get_attribute("data-status") == "idle")

        _wait(page, finished, RUN_SECONDS, f"{chapter} to finish running")
        print(f"{chapter}: Restart Kernel and Run All Cells took {time.monotonic() - start:.1f} s in JupyterLab")

        # What the kernel produced: saved through the UI (File > Save Notebook), read back from disk.
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^File$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Save Notebook$")).click()
        _wait(page, lambda: _ran(path) and not page.locator(".jp-mod-dirty").count(), 60, "the notebook to be saved")
        assert not _problems(path), f"{chapter} in JupyterLab:\n" + "\n".join(_problems(path))
        assert _figures(path) == stored_figures, f"{chapter}: {_figures(path)} figures saved, {stored_figures} stored"
        # What the learner sees: every figure drawn and decoded by the browser.
        images = page.evaluate("() => Array.from(document.querySelectorAll('.jp-OutputArea-output img'))"
                               ".map(i => i.complete && i.naturalWidth > 0)")
        assert len(images) == stored_figures, f"{chapter}: {len(images)} figures shown in JupyterLab, {stored_figures} stored"
        assert all(images), f"{chapter}: {images.count(False)} of {len(images)} figures did not render in JupyterLab"
        assert not outside, f"JupyterLab tried to reach the network: {outside}"
        assert not errors, f"console errors in JupyterLab running {chapter}: {errors}"
    finally:
        context.close()
        lab.stop_kernels()


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

    assert not _problems(notebook), f"{chapter}, downloaded and run alone:\n" + "\n".join(_problems(notebook))
    assert _figures(notebook) == _figures(source), f"{chapter}: {_figures(notebook)} figures drawn, {_figures(source)} stored"
    installed = list((python.parent.parent / ENV_SITE).glob("vanishing-*.dist-info"))
    assert len(installed) == 1, "the setup cell did not install the library into the fresh environment"
    origin = json.loads((installed[0] / "direct_url.json").read_text())
    assert origin.get("url") == url and origin.get("vcs_info", {}).get("commit_id") == commit, (
        f"the library was not installed from the setup cell's URL at the mirror's commit: {origin}")
