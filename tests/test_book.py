"""The book's structure and hygiene: what a reader, Binder, Colab and nbval rely on."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO = CONFIG["repository"]["url"].rstrip("/")
NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb"))
IDS = [p.name for p in NOTEBOOKS]


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc["parts"]:
        for chapter in part["chapters"]:
            files.append(chapter["file"])
            files += [s["file"] for s in chapter.get("sections", [])]
    return files


def _code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_toc_and_chapters_agree():
    listed = _toc_files()
    assert len(listed) == len(set(listed)), "a page is listed twice in _toc.yml"
    on_disk = {p.relative_to(ROOT).with_suffix("").as_posix() for p in (ROOT / "chapters").glob("*") if p.suffix in (".ipynb", ".md")}
    assert on_disk == set(listed) - {"index"}, f"not in _toc.yml: {on_disk - set(listed)}; missing files: {set(listed) - on_disk - {'index'}}"


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_binder_is_in_step_with_requirements():
    main, binder = _pins(ROOT / "requirements.txt"), _pins(ROOT / "binder" / "requirements.txt")
    assert binder["torch"] == main["torch"] + "+cpu", "Binder must use the CPU build of the pinned torch"
    assert "download.pytorch.org/whl/cpu" in (ROOT / "binder" / "requirements.txt").read_text()
    tools = ("pytest", "pytest-xdist", "nbval", "hypothesis", "playwright", "ruff", "mypy", "pypdf",
             "transformers")  # the checkup's zoo: tests, and chapter 13, which installs it on demand
    runtime = {k: v for k, v in main.items() if k not in tools}
    for name, version in runtime.items():
        if name == "torch":
            continue
        assert binder.get(name) == version, f"binder/requirements.txt pins {name}=={binder.get(name)}, requirements.txt {version}"
    post = (ROOT / "binder" / "postBuild").read_text()
    assert post.startswith("#!/bin/bash") and "set -e" in post and "pip install" in post and "-e ." in post


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_chapter_setup_cell(path):
    first = _source(_code_cells(path)[0])
    assert "import vanishing as vg" in first and "except ModuleNotFoundError" in first
    assert f"git+{REPO}" in first, f"{path.name}: the install cell must install from {REPO} (the _config.yml repository)"
    assert re.search(r"vg\.seed\(\d+\)", first), f"{path.name}: the first code cell must seed through vg.seed"
    assert not _code_cells(path)[0].get("outputs"), f"{path.name}: the setup cell prints nothing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_hygiene(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3"
    text = path.read_text()
    assert "MPLBACKEND" not in text, f"{path.name} sets MPLBACKEND: figures would vanish"
    for cell in _code_cells(path):
        assert cell.get("execution_count") is not None, f"{path.name}: a code cell was never executed"
        assert "execution" not in cell.get("metadata", {}), f"{path.name}: per-cell timestamps are stored"
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"{path.name}: a stored error output"
            plain = "".join(out.get("data", {}).get("text/plain", ""))
            assert not re.search(r"<matplotlib\.\w+.* at 0x|\[<matplotlib", plain), f"{path.name}: a plot object repr"
            assert "/work/" not in plain + "".join(out.get("text", "")), f"{path.name}: a machine path in an output"
        if any("image/png" in out.get("data", {}) for out in cell.get("outputs", [])):
            meta = cell.get("metadata", {})
            fig = meta.get("mystnb", {}).get("figure", {})
            assert fig.get("caption") and fig.get("name"), f"{path.name}: a figure without caption/name metadata"
            assert len(meta.get("image", {}).get("alt", "")) > 20, f"{path.name}: figure {fig.get('name')} lacks alt text"


def _guard_calls(path: Path, library_present: bool) -> list[tuple[str, str]]:
    """Run a chapter's setup guard (only the try/except part) with a fake IPython; return its magic calls."""
    from IPython.core.inputtransformer2 import TransformerManager

    first = _source(_code_cells(path)[0])
    guard = first[first.index("try:"): first.index("import vanishing as vg", first.index("except")) + len("import vanishing as vg")]
    code = TransformerManager().transform_cell(guard)
    calls: list[tuple[str, str]] = []
    saved = sys.modules.get("vanishing")

    class FakeIPython:
        def run_line_magic(self, name, line):
            calls.append((name, line))
            if saved is not None:
                sys.modules["vanishing"] = saved  # the "install" makes the import succeed

    if not library_present:
        sys.modules["vanishing"] = None  # makes `import vanishing` raise ModuleNotFoundError
    try:
        exec(code, {"get_ipython": lambda: FakeIPython()})
    finally:
        if saved is not None:
            sys.modules["vanishing"] = saved
        else:
            sys.modules.pop("vanishing", None)
    return calls


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_install_guard(path):
    import vanishing  # noqa: F401  (the library is installed in the test environment)

    assert _guard_calls(path, library_present=True) == [], "the guard must do nothing where the library is installed"
    calls = _guard_calls(path, library_present=False)
    assert len(calls) == 1 and calls[0][0] == "pip" and f"git+{REPO}" in calls[0][1]


def test_glossary_terms_are_linked_at_first_use():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import link_glossary
    finally:
        sys.path.pop(0)
    terms = link_glossary.glossary_terms()
    assert len(terms) >= 25
    missing = {}
    for path in sorted((ROOT / "chapters").glob("*")):
        if path.suffix in (".ipynb", ".md") and path.name not in link_glossary.SKIP_PAGES:
            unlinked = link_glossary.process(path, terms, write=False)
            if unlinked:
                missing[path.name] = unlinked
    assert not missing, f"glossary terms used but not linked (run python tools/link_glossary.py): {missing}"


def test_every_glossary_term_is_linked_from_some_page():
    # a headword the chapters spell differently ("CEC" for "constant error carousel") is never
    # linked, and the test above cannot see it
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import link_glossary
    finally:
        sys.path.pop(0)
    linked = set()
    for path in sorted((ROOT / "chapters").glob("*")):
        if path.suffix in (".ipynb", ".md") and path.name not in link_glossary.SKIP_PAGES:
            linked |= link_glossary.already_linked(link_glossary._page_text(path))
    unused = [t for t in link_glossary.glossary_terms() if t.lower() not in linked]
    assert not unused, f"glossary terms no page links: {unused}"


CHAPTERS = [p for p in NOTEBOOKS if p.name[:2].isdigit()]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_is_a_textbook_chapter(path):
    """Every numbered chapter: prerequisites note, exercises with hidden solutions, figures referenced, citations."""
    nb = json.loads(path.read_text())
    text = "\n".join(_source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "What you need to know first" in text, f"{path.name}: no 'What you need to know first' note"
    exercises = len(re.findall(r"(?:`{3,}|:{3,})\{exercise(?:-start)?\}", text))
    solutions = re.findall(r"(?:`{3,}|:{3,})\{solution(?:-start)?\}[^\n]*\n(?::[^\n]*\n)*", text)
    assert exercises >= 3, f"{path.name}: {exercises} exercises (at least 3)"
    assert len(solutions) >= exercises and all(":class: dropdown" in s for s in solutions), f"{path.name}: solutions must be hidden"
    assert "{cite" in text, f"{path.name}: cites nothing"
    names = [c["metadata"].get("mystnb", {}).get("figure", {}).get("name") for c in nb["cells"] if c["cell_type"] == "code"]
    for name in filter(None, names):
        assert f"`{name}`" in text, f"{path.name}: figure {name} is never referenced from the text"
    words = len(re.sub(r"\$\$.*?\$\$|\$[^$]*\$", " ", text, flags=re.S).split())
    assert words >= 2000, f"{path.name}: only {words} words of prose"


# A stray control character in prose is a LaTeX command eaten by a string escape ("\text" written in a
# Python string becomes a TAB and "ext"); a placeholder is a number someone meant to fill in.
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
# "[see NN_x]" is what the sources appendix prints for a number of another chapter when it runs outside the book;
# inside the book it must never be stored.
PLACEHOLDER = re.compile(r"\b(?:[A-Z]+_)+(?:CONST|NUMBER|VALUE|TODO)\b|\b(?:TODO|FIXME|XXX|TBD)\b|\{\{\s*\w+\s*\}\}"
                         r"|\[see \d\d_\w+\]")


def _prose_pages() -> list[tuple[str, str]]:
    pages = [(p.name, "\n".join(_source(c) for c in json.loads(p.read_text())["cells"] if c["cell_type"] == "markdown"))
             for p in NOTEBOOKS]
    pages += [(p.relative_to(ROOT).as_posix(), p.read_text()) for p in [ROOT / "index.md", *sorted((ROOT / "chapters").glob("*.md"))]]
    return pages


def _printed_pages() -> list[tuple[str, str]]:
    """What a reader sees besides the prose: each notebook's stored text outputs, figure captions and alt texts."""
    pages = []
    for p in NOTEBOOKS:
        parts = []
        for cell in _code_cells(p):
            meta = cell.get("metadata", {})
            parts += [meta.get("mystnb", {}).get("figure", {}).get("caption", ""), meta.get("image", {}).get("alt", "")]
            for out in cell.get("outputs", []):
                parts.append("".join(out.get("text", "")))
                parts += ["".join(out.get("data", {}).get(kind, "")) for kind in ("text/plain", "text/markdown", "text/latex")]
        pages.append((f"{p.name} (outputs)", "\n".join(filter(None, parts))))
    return pages


@pytest.mark.parametrize("name, text", _prose_pages() + _printed_pages(),
                         ids=[n for n, _ in _prose_pages() + _printed_pages()])
def test_prose_has_no_control_characters_or_placeholders(name, text):
    bad = [f"{m.group()!r} in ...{text[max(0, m.start() - 30):m.end() + 30]!r}..." for m in CONTROL.finditer(text)]
    bad += [f"placeholder {m.group()!r} in ...{text[max(0, m.start() - 40):m.end() + 40]!r}..." for m in PLACEHOLDER.finditer(text)]
    assert not bad, f"{name}: " + "; ".join(bad)


def test_the_prose_check_finds_what_it_is_for():
    assert CONTROL.search("(\text{gated update})") and PLACEHOLDER.search("only NUMBER_CONST of 64 pixels")
    assert PLACEHOLDER.search("training error [see 08_residual] at depth 28")
    assert not CONTROL.search("two lines\nof prose") and not PLACEHOLDER.search("ReLU_6, MAX_NORM and a todo list")


def test_placeholder_in_an_output_or_caption_is_found(tmp_path, monkeypatch):
    """An unfilled placeholder printed by a cell or left in a figure's caption reaches the checked pages."""
    nb = {"cells": [{"cell_type": "code", "source": "print(1)", "outputs": [
        {"output_type": "stream", "name": "stdout", "text": ["lowest NUMBER_CONST at step 3\n"]},
        {"output_type": "execute_result", "data": {"text/plain": "'TODO'"}}],
        "metadata": {"mystnb": {"figure": {"caption": "Loss of XXX seeds."}}}}]}
    (tmp_path / "99_fake.ipynb").write_text(json.dumps(nb))
    monkeypatch.setattr(sys.modules[__name__], "NOTEBOOKS", [tmp_path / "99_fake.ipynb"])
    [(name, text)] = _printed_pages()
    assert name == "99_fake.ipynb (outputs)"
    assert [m.group() for m in PLACEHOLDER.finditer(text)] == ["XXX", "NUMBER_CONST", "TODO"]


def test_every_number_the_sources_appendix_quotes_has_its_tagged_cell():
    """Each (chapter, a1-* tag) pair the appendix quotes names one committed cell that printed something, and no
    chapter carries an a1-* tag the appendix does not read: a lost tag shows here, not only in the appendix's slow
    strict output check."""
    a1 = json.loads((ROOT / "chapters" / "a1_checking_sources.ipynb").read_text(encoding="utf-8"))
    code = "\n".join("".join(c["source"]) for c in a1["cells"] if c["cell_type"] == "code")
    quoted = set(re.findall(r'"(\d\d_\w+)",\s*"(a1-[\w-]+)"', code))
    assert len(quoted) >= 10, quoted
    tagged = set()
    for path in CHAPTERS:
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            tagged |= {(path.stem, t) for t in cell.get("metadata", {}).get("tags", []) if t.startswith("a1-")}
            for t in cell.get("metadata", {}).get("tags", []):
                if (path.stem, t) in quoted:
                    assert any(o.get("name") == "stdout" for o in cell.get("outputs", [])), f"{path.stem} [{t}] printed nothing"
    assert not quoted - tagged, f"quoted by the appendix but tagged nowhere: {sorted(quoted - tagged)}"
    assert not tagged - quoted, f"tagged but not quoted by the appendix: {sorted(tagged - quoted)}"
    for chapter, tag in quoted:
        cells = json.loads((ROOT / "chapters" / f"{chapter}.ipynb").read_text(encoding="utf-8"))["cells"]
        assert sum(tag in c.get("metadata", {}).get("tags", []) for c in cells) == 1, f"{chapter} [{tag}] not unique"


def test_references_parse_and_every_cited_key_exists():
    # a merge once left an entry unclosed: the build failed on it, and no test had noticed
    from pybtex.database import parse_file

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    keys: set[str] = set()
    for bib in config["bibtex_bibfiles"]:
        entries = set(parse_file(str(ROOT / bib)).entries)
        # a key in two files is an error for sphinxcontrib-bibtex, which then drops later entries
        assert not keys & entries, f"{bib} repeats keys of an earlier file: {sorted(keys & entries)}"
        keys |= entries
    cited = set()
    pages = [_source(c) for p in NOTEBOOKS for c in json.loads(p.read_text())["cells"]
             if c["cell_type"] == "markdown"]
    pages += [p.read_text() for p in (ROOT / "chapters").glob("*.md")]
    for text in pages:
        for group in re.findall(r"\{cite(?::[a-z]+)?\}`([^`]+)`", text):
            cited |= {k.strip() for k in group.split(",")}
    assert cited and cited <= keys, f"cited but in no bibliography file: {sorted(cited - keys)}"
