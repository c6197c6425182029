"""Print the whole book to one PDF for offline readers, with headless Chromium.

    python tools/pdf.py           # after tools/build.py; writes _build/html/vanishing-gradients.pdf
    python tools/pdf.py --force   # print again even if no page changed since the last PDF

Opens every page of the built site in reading order (the table of contents),
lets the bundled MathJax typeset it, opens every collapsed solution, prints it
with Debian's Chromium through Playwright (the theme's print style drops the
navigation), and joins the pages into one file with pypdf. No network is used.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
CHROMIUM = "/usr/bin/chromium"
OUT = HTML / "vanishing-gradients.pdf"


def reading_order() -> list[Path]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        for entry in part.get("chapters", []):
            files += [entry["file"]] + [s["file"] for s in entry.get("sections", [])]
    return [HTML / f"{f}.html" for f in files]


def main() -> int:
    if not (HTML / "index.html").exists():
        print("tools/pdf.py: build the site first (python tools/build.py)", file=sys.stderr)
        return 1
    if not Path(CHROMIUM).exists():
        print(f"tools/pdf.py: {CHROMIUM} is missing (Debian package chromium); no PDF written", file=sys.stderr)
        return 1
    pages = reading_order()
    if OUT.exists() and "--force" not in sys.argv[1:] and all(p.stat().st_mtime < OUT.stat().st_mtime for p in pages):
        print(f"tools/pdf.py: {OUT.relative_to(ROOT)} is newer than every page; nothing to print (--force to redo)")
        return 0
    from playwright.sync_api import sync_playwright
    from pypdf import PdfWriter

    writer = PdfWriter()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page()
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(("file:", "data:")) else r.abort())
        for path in pages:
            page.goto(path.as_uri(), wait_until="load")
            if page.locator(".math").count():
                page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=60000)
                page.evaluate("() => MathJax.startup.promise")
            page.evaluate("() => document.querySelectorAll('details').forEach(d => d.open = true)")
            pdf = page.pdf(format="A4", print_background=False,
                           margin={"top": "15mm", "bottom": "15mm", "left": "12mm", "right": "12mm"})
            writer.append(io.BytesIO(pdf), outline_item=page.title().split(" — ")[0])
        browser.close()
    writer.add_metadata({"/Title": "Vanishing Gradients"})
    with OUT.open("wb") as handle:
        writer.write(handle)
    print(f"tools/pdf.py: wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size / 1e6:.1f} MB, {len(writer.pages)} pages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
