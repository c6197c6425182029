"""Link each glossary term at its first use in every chapter.

    python tools/link_glossary.py          # rewrite chapters: first plain use -> {term}`...`
    python tools/link_glossary.py --check  # list what is missing; exit 1 if anything is

It also lists the glossary's headwords that no page uses or links (a term the
chapters spell differently is never linked).

The terms are those of chapters/glossary.md. In each chapter (notebooks and
Markdown pages) the first occurrence of a term in running prose - not in a
heading, code, math, link, role or directive option - becomes a ``{term}``
reference, unless the chapter links the term already. Running it twice changes
nothing the second time.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"
SKIP_PAGES = {"glossary.md", "bibliography.md", "notation.md", "execution_statistics.md"}
PROSE_DIRECTIVES = ("exercise", "solution", "prf:", "note", "tip", "admonition", "important", "warning", "seealso", "hint")
# Spans never touched: code, math, roles, links, HTML, URLs.
PROTECTED = re.compile(
    r"```.*?```|`[^`]*`|\$\$.*?\$\$|\$[^$\n]*\$|\{[\w:-]+\}`[^`]*`|!?\[[^\]]*\]\([^)]*\)|<[^>]+>|https?://\S+"
)


def glossary_terms() -> list[str]:
    text = (CHAPTERS / "glossary.md").read_text()
    block = text.split("```{glossary}", 1)[1].split("\n```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip() and not line.startswith((" ", "\t"))]


def _prose_lines(text: str):
    """Yield (index, line) for the lines of ``text`` that are running prose."""
    fence: list[bool] = []  # stack: is the open fence prose?
    for i, line in enumerate(text.split("\n")):
        stripped = line.strip()
        m = re.match(r"^(`{3,}|:{3,})\s*(\{([\w:-]+)\})?", stripped)
        if m:
            if m.group(2) is None and fence and len(stripped.rstrip("`:")) == 0:
                fence.pop()  # a bare closing fence
            elif m.group(2) is not None:
                fence.append(m.group(3).startswith(PROSE_DIRECTIVES) or m.group(1).startswith(":"))
            elif stripped.startswith("```"):
                fence.append(False)  # an opening code fence with a language or none
            continue
        if fence and not fence[-1]:
            continue
        if not stripped or stripped.startswith(("#", ":", "|", "<")):
            continue
        yield i, line


def link_text(text: str, terms: list[str], done: set[str]) -> str:
    lines = text.split("\n")
    for term in terms:
        if term.lower() in done:
            continue
        pattern = re.compile(rf"(?<![\w-])({re.escape(term)}s?)(?![\w-])", re.IGNORECASE)
        for i, line in _prose_lines("\n".join(lines)):
            pos, out, hit = 0, [], False
            for m in PROTECTED.finditer(line):
                gap = line[pos:m.start()]
                if not hit:
                    gap, hit = _sub_once(pattern, gap, term)
                out += [gap, m.group(0)]
                pos = m.end()
            tail = line[pos:]
            if not hit:
                tail, hit = _sub_once(pattern, tail, term)
            out.append(tail)
            if hit:
                lines[i] = "".join(out)
                done.add(term.lower())
                break
    return "\n".join(lines)


def _sub_once(pattern: re.Pattern, text: str, term: str) -> tuple[str, bool]:
    m = pattern.search(text)
    if not m:
        return text, False
    word = m.group(1)
    role = f"{{term}}`{word}`" if word == term else f"{{term}}`{word} <{term}>`"
    return text[: m.start()] + role + text[m.end():], True


def already_linked(text: str) -> set[str]:
    found = set()
    for m in re.finditer(r"\{term\}`([^`<]*?)(?:\s*<([^>]+)>)?`", text):
        found.add((m.group(2) or m.group(1)).strip().lower())
    return found


def process(path: Path, terms: list[str], write: bool) -> list[str]:
    """Link the terms of one page; return the terms that were (or would be) linked."""
    if path.suffix == ".ipynb":
        nb = nbformat.read(path, as_version=4)
        cells = [c for c in nb.cells if c.cell_type == "markdown"]
        done = already_linked("\n".join(c.source for c in cells))
        before = set(done)
        for cell in cells:
            cell.source = link_text(cell.source, terms, done)
        if write and done != before:
            nbformat.write(nb, path)
    else:
        text = path.read_text()
        done = already_linked(text)
        before = set(done)
        new = link_text(text, terms, done)
        if write and new != text:
            path.write_text(new)
    return sorted(done - before)


def _page_text(path: Path) -> str:
    """The prose of one page: a notebook's markdown cells, or a Markdown file."""
    if path.suffix == ".ipynb":
        nb = nbformat.read(path, as_version=4)
        return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    return path.read_text()


def main() -> int:
    check = "--check" in sys.argv[1:]
    terms = glossary_terms()
    missing = False
    used: set[str] = set()  # terms some page links (or would link, with --check)
    for path in sorted(CHAPTERS.glob("*")):
        if path.suffix not in (".ipynb", ".md") or path.name in SKIP_PAGES:
            continue
        linked = process(path, terms, write=not check)
        used |= already_linked(_page_text(path)) | set(linked)
        if linked:
            missing = True
            print(f"{path.name}: {'unlinked' if check else 'linked'} first use of {', '.join(linked)}")
    # A headword no page uses is never linked: a term the chapters spell differently, or one
    # they dropped. Rename it to the chapters' wording, link it by hand, or remove it.
    unused = [t for t in terms if t.lower() not in used]
    if unused:
        missing = True
        print(f"glossary.md: no page uses or links {', '.join(unused)}")
    return 1 if (check and missing) else 0


if __name__ == "__main__":
    sys.exit(main())
