"""Build the book: execute every chapter (through jupyter-cache) and render the site.

    python tools/build.py            # the build the README describes (warnings are errors),
                                     # then the whole book as one PDF (tools/pdf.py)
    python tools/build.py --no-pdf   # the site only
    python tools/build.py --stored   # render the committed outputs, executing nothing
                                     # (CI, whose strict-nbval tests prove those outputs)
    python tools/build.py --preview  # render the stored outputs without executing, into
                                     # a scratch copy: a quick check of a chapter's MyST,
                                     # cross-references and citations while writing

jupyter-cache keys a notebook on its code cells only, so a change in lib/ would
not re-execute anything; this script keeps a hash of lib/ beside the cache and
clears the cache when it changes. A clean clone has no cache and executes all.

Jupyter Book executes notebooks one after another. To use every core, this
script first executes the chapters missing from the cache in parallel (one
single-threaded kernel per core, ``VANISHING_BUILD_JOBS`` to change that) and
stores them in the same cache, in the same way myst-nb does; the Sphinx build
then finds every chapter cached. The first chapter that fails stops the build
with its traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "_build" / ".jupyter_cache"
STAMP = ROOT / "_build" / "lib.sha256"


def lib_hash() -> str:
    h = hashlib.sha256()
    for path in sorted((ROOT / "lib").rglob("*.py")):
        h.update(path.relative_to(ROOT).as_posix().encode())
        h.update(path.read_bytes())
    h.update((ROOT / "pyproject.toml").read_bytes())
    return h.hexdigest()


def jupyter_book() -> list[str]:
    exe = Path(sys.executable).with_name("jupyter-book")
    return [str(exe) if exe.exists() else "jupyter-book"]


def toc_notebooks() -> list[Path]:
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = []
    for part in toc.get("parts", []):
        for entry in part.get("chapters", []):
            files += [entry["file"]] + [s["file"] for s in entry.get("sections", [])]
    return [ROOT / f"{f}.ipynb" for f in files if (ROOT / f"{f}.ipynb").exists()]


def _execute(path: str) -> tuple[str, object, float, str | None]:
    """Run one notebook the way myst-nb's cache mode does; return it with its run time or error."""
    import nbformat
    from jupyter_cache.executors.utils import single_nb_execution

    nb = nbformat.read(path, as_version=4)
    result = single_nb_execution(nb, cwd=str(Path(path).parent), timeout=600, allow_errors=False)
    return path, nb, result.time, (result.exc_string if result.err is not None else None)


def pre_execute() -> int:
    """Execute, in parallel, the chapters the cache does not hold yet, and cache them."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    cache = get_cache(str(CACHE))
    todo = []
    for path in toc_notebooks():
        try:
            cache.match_cache_notebook(nbformat.read(path, as_version=4))
        except KeyError:
            todo.append(str(path))
    if not todo:
        return 0
    jobs = int(os.environ.get("VANISHING_BUILD_JOBS", os.cpu_count() or 1))
    print(f"tools/build.py: executing {len(todo)} chapter(s) with {jobs} parallel kernel(s)", flush=True)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_execute, p) for p in todo]
        for future in as_completed(futures):
            path, nb, seconds, error = future.result()
            name = Path(path).relative_to(ROOT)
            if error is not None:
                print(f"tools/build.py: {name} failed:\n{error}", flush=True)
                for other in futures:
                    other.cancel()
                return 1
            record = cache.add_nb_to_project(path)
            cache.cache_notebook_bundle(CacheBundleIn(nb, record.uri, data={"execution_seconds": seconds}),
                                        check_validity=False, overwrite=True)
            print(f"tools/build.py: executed {name} in {seconds:.0f} s", flush=True)
    return 0


def build(stored: bool = False) -> int:
    if stored:
        return render_stored()
    digest = lib_hash()
    if CACHE.exists() and (not STAMP.exists() or STAMP.read_text() != digest):
        print("tools/build.py: lib/ changed since the last build; clearing the execution cache")
        shutil.rmtree(CACHE)
    os.environ.pop("MPLBACKEND", None)
    from vanishing import kernels
    from vanishing.runtime import QUIET_ENV

    kernels.pin()  # every kernel the build starts runs the book's CPU kernel set
    os.environ[QUIET_ENV] = "1"  # and shows no progress bars: the site renders the outputs
    if pre_execute():
        return 1
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # an inherited Agg backend would silently drop every figure
    cmd = jupyter_book() + ["build", str(ROOT), "--warningiserror", "--nitpick", "--keep-going"]
    code = subprocess.call(cmd, env=env, cwd=ROOT)
    if code == 0:
        STAMP.parent.mkdir(exist_ok=True)
        STAMP.write_text(digest)
    return code


def pdf() -> int:
    return subprocess.call([sys.executable, str(ROOT / "tools" / "pdf.py")], cwd=ROOT)


def render_stored() -> int:
    """Render the site from the outputs committed in the chapters, executing nothing.

    CI builds this way: its tests re-execute every chapter under strict nbval,
    once under the pinned kernels and once as another CPU would run them, which
    proves that these stored outputs are what the code prints. Executing them a
    third time for the site would only cost time.
    """
    config = (ROOT / "_config.yml").read_text()
    if "execute_notebooks: cache" not in config:
        print("tools/build.py: _config.yml has no 'execute_notebooks: cache' to switch off", file=sys.stderr)
        return 1
    with tempfile.NamedTemporaryFile("w", suffix=".yml", dir=ROOT / "_build" if (ROOT / "_build").exists() else None,
                                     delete=False) as handle:
        handle.write(config.replace("execute_notebooks: cache", "execute_notebooks: 'off'"))
    try:
        env = dict(os.environ)
        env.pop("MPLBACKEND", None)
        cmd = jupyter_book() + ["build", str(ROOT), "--config", handle.name, "--warningiserror", "--nitpick", "--keep-going"]
        return subprocess.call(cmd, env=env, cwd=ROOT)
    finally:
        os.unlink(handle.name)


def preview() -> int:
    """Render the committed outputs of every chapter present, without executing."""
    out = Path(tempfile.mkdtemp(prefix="vg-preview-"))
    src = out / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns("_build", ".git", ".jupyter_cache"))
    config = (src / "_config.yml").read_text().replace("execute_notebooks: cache", "execute_notebooks: 'off'")
    (src / "_config.yml").write_text(config)
    # Chapters not yet in the table of contents go into a "Drafts" part so they render too.
    import yaml

    toc = yaml.safe_load((src / "_toc.yml").read_text())
    listed = {toc["root"]}
    for part in toc.get("parts", []):
        for entry in part.get("chapters", []):
            listed.add(entry["file"])
            listed.update(s["file"] for s in entry.get("sections", []))
    drafts = [
        {"file": p.relative_to(src).with_suffix("").as_posix()}
        for p in sorted(src.glob("chapters/*"))
        if p.suffix in (".ipynb", ".md") and p.relative_to(src).with_suffix("").as_posix() not in listed
    ]
    if drafts:
        toc.setdefault("parts", []).append({"caption": "Drafts", "numbered": True, "chapters": drafts})
        (src / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)
    cmd = jupyter_book() + ["build", str(src), "--path-output", str(out), "--warningiserror", "--nitpick", "--keep-going"]
    code = subprocess.call(cmd, env=env, cwd=src)
    print(f"preview: {out / '_build' / 'html' / 'index.html'}")
    return code


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preview", action="store_true", help="render stored outputs only, into a scratch copy")
    parser.add_argument("--stored", action="store_true",
                        help="render the committed outputs without executing (CI: its tests prove them)")
    parser.add_argument("--no-pdf", action="store_true", help="skip printing the book to one PDF")
    args = parser.parse_args()
    if args.preview:
        sys.exit(preview())
    sys.exit(build(stored=args.stored) or (0 if args.no_pdf else pdf()))
