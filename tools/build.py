"""Build the book: execute every chapter (through jupyter-cache) and render the site.

    python tools/build.py            # the build the README describes (warnings are errors)
    python tools/build.py --preview  # render the stored outputs without executing, into
                                     # a scratch copy: a quick check of a chapter's MyST,
                                     # cross-references and citations while writing

jupyter-cache keys a notebook on its code cells only, so a change in lib/ would
not re-execute anything; this script keeps a hash of lib/ beside the cache and
clears the cache when it changes. A clean clone has no cache and executes all.
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


def build() -> int:
    digest = lib_hash()
    if CACHE.exists() and (not STAMP.exists() or STAMP.read_text() != digest):
        print("tools/build.py: lib/ changed since the last build; clearing the execution cache")
        shutil.rmtree(CACHE)
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # an inherited Agg backend would silently drop every figure
    cmd = jupyter_book() + ["build", str(ROOT), "--warningiserror", "--nitpick", "--keep-going"]
    code = subprocess.call(cmd, env=env, cwd=ROOT)
    if code == 0:
        STAMP.parent.mkdir(exist_ok=True)
        STAMP.write_text(digest)
    return code


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
    args = parser.parse_args()
    sys.exit(preview() if args.preview else build())
