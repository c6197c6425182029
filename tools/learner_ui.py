"""JupyterLab driven as a learner drives it: a server on loopback, a chapter run in Chromium.

Used by ``tests/test_learner.py`` (every cell ran, no error, every figure drawn)
and by ``bench/binder_rehearsal.py`` (the memory of the server and its kernel
while a chapter runs in the UI, against Binder's 2 GB). Nothing here reaches
the network: the server is started with its news feed, update check and
extension manager's index switched off, and the browser aborts, and records,
every request that is not to the local server.

    lab = Lab(home, jupyter="/path/to/env/bin/jupyter")   # `jupyter lab <folder>`, loopback, a random token
    lab.start()
    with sync_playwright() as p:
        browser = chromium(p)
        walk = run_all(browser, lab, "03_dynamical_system.ipynb", seconds=900, every_poll=lambda: ...)
    lab.stop()
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright's own browsers are never downloaded
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SERVER_START_SECONDS = 120
SHUTDOWN_SECONDS = 30
PROMPTS = "() => Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')).map(e => e.textContent.trim())"
IMAGES = "() => Array.from(document.querySelectorAll('.jp-OutputArea-output img')).map(i => i.complete && i.naturalWidth > 0)"


class Lab:
    """A JupyterLab server on 127.0.0.1 with a random token, isolated from the user's Jupyter setup.

    ``jupyter`` is the command a learner types (the one beside the environment's
    Python); the server is started as the README's laptop path starts it,
    ``jupyter lab <folder>``, with what an automated run needs added (no browser
    of its own, loopback, a free port, a known token). ``env`` is the process
    environment it starts from (default: this process's).
    """

    def __init__(self, home: Path, jupyter: str, env: dict[str, str] | None = None):
        self.home = home
        self.jupyter = jupyter
        self.notebooks = home / "notebooks"
        self.notebooks.mkdir(parents=True)
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
            os.environ if env is None else env,
            JUPYTER_CONFIG_DIR=str(config), JUPYTER_DATA_DIR=str(home / "data"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
            JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
        )
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> None:
        """Start the server and wait until it has written its URL; RuntimeError with its log if it does not."""
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [self.jupyter, "lab", str(self.notebooks), "--no-browser", "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0",
                 f"--IdentityProvider.token={self.token}", "--ServerApp.allow_root=True", "--ServerApp.terminals_enabled=False"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + SERVER_START_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            for info in (self.home / "runtime").glob("jpserver-*.json"):
                try:
                    self.url = json.loads(info.read_text())["url"].rstrip("/")
                    return
                except (json.JSONDecodeError, KeyError):  # caught while the server was still writing it
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"JupyterLab did not start in {SERVER_START_SECONDS} s:\n{self.log.read_text()[-3000:]}")

    def api(self, path: str, method: str = "GET") -> object:
        request = urllib.request.Request(f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def memory_mb(self) -> tuple[float, float]:
        """(server and all its kernels, server alone): proportional set size in MB, now.

        PSS counts a page shared by several processes once in all, as the memory
        cgroup that enforces Binder's limit charges it; summing resident sizes would
        count shared libraries once per process.
        """
        assert self.proc is not None
        server = _pss_mb(self.proc.pid)
        return server + sum(_pss_mb(pid) for pid in _descendants(self.proc.pid)), server

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


class PeakMemory:
    """The largest memory a Lab's server and kernels took, in MB, over the samples taken by calling it."""

    def __init__(self, lab: Lab):
        self.lab, self.total, self.server = lab, 0.0, 0.0

    def __call__(self) -> None:
        total, server = self.lab.memory_mb()
        self.total, self.server = max(self.total, total), max(self.server, server)


def _descendants(pid: int) -> list[int]:
    """Every process below pid (from each process's parent in /proc/<pid>/stat)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (command) state ppid ...": the command may hold spaces and parentheses
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # the process ended meanwhile
            continue
    found, todo = [], [pid]
    while todo:
        below = todo.pop()
        children = [child for child, parent in parents.items() if parent == below]
        found += children
        todo += children
    return found


def _pss_mb(pid: int) -> float:
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:  # the process ended meanwhile
        return 0.0
    kb = next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
    return kb / 1024


def chromium(playwright):
    """Debian's Chromium, headless, through Playwright; RuntimeError if it is not installed."""
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium package")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


#: Console errors JupyterLab logs about itself, not about the notebook: its debugger panel asks the
#: kernel for its state while the kernel restarts, and logs the cancelled request (a race, seen once in
#: CI on a chapter with no change).
BENIGN = ("Could not restore the debugger state: Canceled future for debug_request message",)


@dataclass
class Walk:
    """What one Restart Kernel and Run All Cells in JupyterLab gave."""

    seconds: float  # from confirming the restart to the last cell's prompt
    images: list[bool] = field(default_factory=list)  # each figure in the page: drawn and decoded by the browser
    outside: list[str] = field(default_factory=list)  # requests that were not to the local server (aborted)
    errors: list[str] = field(default_factory=list)  # the browser's console errors and uncaught exceptions


def _wait(page, predicate: Callable[[], object], seconds: float, what: str, every_poll: Callable[[], None] | None = None,
          on_dialog: Callable[[object], None] | None = None) -> None:
    """Poll the page until predicate() holds; call every_poll and accept a dialog with on_dialog meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if every_poll is not None:
            every_poll()
        if on_dialog is not None and page.locator(".jp-Dialog").count():
            on_dialog(page.locator(".jp-Dialog"))
        if predicate():
            return
        page.wait_for_timeout(250)
    raise TimeoutError(f"timed out after {seconds:.0f} s waiting for {what}")


def run_all(browser, lab: Lab, name: str, seconds: float, every_poll: Callable[[], None] | None = None) -> Walk:
    """Open notebook ``name`` (in lab.notebooks) as a learner: accept the kernel offered, Kernel > Restart
    Kernel and Run All Cells, confirm, wait until every cell has run, File > Save Notebook.

    every_poll is called about four times a second from opening to saving (to sample memory).
    The notebook on disk then holds what the kernel produced; its kernel is shut down.
    """
    path = lab.notebooks / name
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    walk = Walk(seconds=float("nan"))
    page.on("console", lambda m: walk.errors.append(m.text)
            if m.type == "error" and not m.text.startswith(BENIGN) else None)
    page.on("pageerror", lambda e: walk.errors.append(f"Uncaught {e}"))

    def route(r):
        if r.request.url.startswith((lab.url, "data:", "blob:")):
            r.continue_()
        else:
            walk.outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    try:
        # ?reset: a fresh workspace, so that the notebooks an earlier walk opened are not restored beside this one.
        page.goto(f"{lab.url}/lab/tree/{name}?reset&token={lab.token}")
        indicator = page.locator(".jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator")
        kernel_name = page.locator(".jp-NotebookPanel-toolbar .jp-KernelName")

        def pick_kernel(dialog):
            # JupyterLab asks which kernel to start, offering the notebook's own (Python 3): a learner clicks "Select".
            if "Select Kernel" not in dialog.inner_text():
                raise RuntimeError(f"unexpected dialog: {dialog.inner_text()}")
            dialog.locator("button.jp-mod-accept").click()

        _wait(page, lambda: kernel_name.count() and "Python 3" in kernel_name.inner_text()
              and indicator.get_attribute("data-status") == "idle",
              SERVER_START_SECONDS, "the notebook to open with an idle Python 3 kernel", every_poll, on_dialog=pick_kernel)

        # On connecting, JupyterLab asks a kernel that can debug for its debugger state and then enables the
        # toolbar's debugger button; a restart before that answer cancels the request and logs a console error.
        debugger = page.locator(".jp-NotebookPanel-toolbar .jp-DebuggerBugButton[aria-disabled='false']")
        try:
            _wait(page, debugger.count, 30, "the debugger state", every_poll)
        except TimeoutError:  # a kernel without a debugger: nothing to wait for
            pass
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Kernel$")).click()
        page.locator(".lm-Menu-itemLabel", has_text="Restart Kernel and Run All Cells").click()
        dialog = page.locator(".jp-Dialog")
        dialog.wait_for(timeout=30_000)
        if "Restart" not in dialog.inner_text():
            raise RuntimeError(f"unexpected dialog: {dialog.inner_text()}")
        dialog.locator("button.jp-mod-accept").click()
        start = time.monotonic()

        def finished():
            prompts = page.evaluate(PROMPTS)
            return (prompts and re.fullmatch(r"\[\d+\]:", prompts[0]) and not any("*" in p for p in prompts)
                    and indicator.get_attribute("data-status") == "idle")

        _wait(page, finished, seconds, f"{name} to finish running", every_poll)
        walk.seconds = time.monotonic() - start

        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^File$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Save Notebook$")).click()
        _wait(page, lambda: _saved_after_run(path) and not page.locator(".jp-mod-dirty").count(), 60,
              "the notebook to be saved", every_poll)
        walk.images = page.evaluate(IMAGES)
        return walk
    finally:
        context.close()
        lab.stop_kernels()


def _saved_after_run(path: Path) -> bool:
    """Whether the first code cell of the notebook on disk has an execution count (saved since it ran)."""
    cells = json.loads(path.read_text())["cells"]
    return next(c for c in cells if c["cell_type"] == "code").get("execution_count") is not None


def problems(path: Path) -> list[str]:
    """Code cells of an executed notebook on disk that did not run or raised, each with its first line."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    found = []
    for i, cell in enumerate(cells):
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        head = source.splitlines()[0] if source else ""
        if cell.get("execution_count") is None:
            found.append(f"code cell {i + 1} did not run: {head}")
        for out in cell.get("outputs", []):
            if out["output_type"] == "error":
                found.append(f"code cell {i + 1} raised {out['ename']}: {out['evalue']} ({head})")
    return found
