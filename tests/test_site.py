"""The built site, as a reader's browser sees it (Debian's Chromium driven by Playwright).

Needs the site built first (the README's build command writes _build/html).
Every page is served from localhost and loaded with all other network access
blocked, so these tests also prove the site works offline.
"""

from __future__ import annotations

import functools
import http.server
import re
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "_build" / "screenshots"

# Third-party console messages tolerated by exact text, each with its reason.
TOLERATED_CONSOLE = {
    # sphinx-thebe writes its inline configuration script twice on every page.
    "Uncaught Identifier 'THEBE_JS_URL' has already been declared",
    # the theme logs this once, on a first visit with no stored light/dark preference.
    "Got invalid theme mode: . Resetting to auto.",
}

if not (HTML / "index.html").exists():
    pytest.fail(
        "the site is not built: run the README's build command (python tools/build.py) before the tests",
        pytrace=False,
    )

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO = CONFIG["repository"]["url"].rstrip("/")
REPO_PATH = urlparse(REPO).path.strip("/")
BRANCH = CONFIG["repository"].get("branch", "main")
PAGES = sorted(
    p.relative_to(HTML).as_posix()
    for p in HTML.rglob("*.html")
    if not p.relative_to(HTML).as_posix().startswith(("_static/", "_sources/", "_images/"))
)
CHAPTERS = sorted(p for p in PAGES if p.startswith("chapters/") and (ROOT / p).with_suffix(".ipynb").exists())


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture(scope="module")
def server():
    handler = functools.partial(_Quiet, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


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


def _open(browser, server, page_path, *, viewport=None, color_scheme="light"):
    """Load one page with outside network blocked; return (page, console errors, outside requests)."""
    context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900}, color_scheme=color_scheme)
    page = context.new_page()
    errors, outside = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"Uncaught {e}"))

    def route(r):
        if r.request.url.startswith(server) or r.request.url.startswith("data:"):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(f"{server}/{page_path}", wait_until="load")
    if page.locator(".math").count():
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=20000)
        page.evaluate("() => MathJax.startup.promise")
    return page, errors, outside


@pytest.mark.parametrize("page_path", PAGES)
def test_page_renders(browser, server, page_path):
    page, errors, outside = _open(browser, server, page_path)
    try:
        ours = [e for e in errors if e not in TOLERATED_CONSOLE]
        assert not ours, f"console errors on {page_path}: {ours}"
        assert not outside, f"{page_path} tried to reach the network: {outside}"
        # Math: every math element was typeset by the bundled MathJax.
        untypeset = page.evaluate(
            "() => Array.from(document.querySelectorAll('.math')).filter(e => !e.querySelector('mjx-container')).length"
        )
        assert untypeset == 0, f"{untypeset} math elements on {page_path} were not typeset"
        prose = page.evaluate(
            "() => Array.from(document.querySelectorAll('article p, article li')).map(e => e.innerText).join('\\n')"
        )
        assert "\\(" not in prose and "$$" not in prose, f"raw TeX delimiters in the prose of {page_path}"
        # Images: every one loaded, and every one says what it shows.
        images = page.evaluate(
            "() => Array.from(document.querySelectorAll('article img')).map(i => "
            "({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0, alt: i.getAttribute('alt') || ''}))"
        )
        broken = [i["src"] for i in images if not i["ok"]]
        assert not broken, f"images that did not load on {page_path}: {broken}"
        silent = [i["src"] for i in images if len(i["alt"].strip()) < 10]
        assert not silent, f"images without a meaningful alt text on {page_path}: {silent}"
    finally:
        page.context.close()


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])


@functools.cache
def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_internal_links_and_anchors_resolve():
    problems = []
    for page in PAGES:
        source = HTML / page
        for href in _parse(source).hrefs:
            if re.match(r"^[a-z]+:", href) or href.startswith("//"):
                continue
            target, anchor = urldefrag(href)
            dest = (source.parent / unquote(target)).resolve() if target else source
            if dest.is_dir():
                dest = dest / "index.html"
            if not dest.exists():
                problems.append(f"{page}: {href} (no such file)")
            elif anchor and dest.suffix == ".html" and unquote(anchor) not in _parse(dest).ids:
                problems.append(f"{page}: {href} (no anchor #{anchor})")
    assert not problems, "broken internal links:\n" + "\n".join(problems)


def test_every_chapter_is_published():
    built = {Path(p).with_suffix("").as_posix() for p in PAGES}
    notebooks = {p.relative_to(ROOT).with_suffix("").as_posix() for p in (ROOT / "chapters").glob("*.ipynb")}
    assert notebooks <= built, f"chapters missing from the site: {sorted(notebooks - built)}"


@pytest.mark.parametrize("page_path", CHAPTERS)
def test_launch_and_download_buttons(page_path):
    html = (HTML / page_path).read_text(encoding="utf-8")
    notebook = Path(page_path).with_suffix(".ipynb").as_posix()
    binder = f"https://mybinder.org/v2/gh/{REPO_PATH}/{BRANCH}?urlpath=tree/{notebook}"
    colab = f"https://colab.research.google.com/github/{REPO_PATH}/blob/{BRANCH}/{notebook}"
    assert binder in html, f"{page_path}: no Binder button for {binder}"
    assert colab in html, f"{page_path}: no Colab button for {colab}"
    assert f'href="{REPO}"' in html, f"{page_path}: no repository button for {REPO}"
    name = Path(notebook).name
    assert f"_sources/chapters/{name}" in html, f"{page_path}: no .ipynb download link"
    assert (HTML / "_sources" / "chapters" / name).exists(), f"{name} is not downloadable from the site"


def test_screenshots_for_review(browser, server):
    """Keep a few screenshots (desktop, dark mode, phone) in _build/screenshots for a human to look at."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    first = CHAPTERS[0] if CHAPTERS else "index.html"
    for name, kwargs in [
        ("index-desktop", dict(page_path="index.html")),
        ("chapter-desktop", dict(page_path=first)),
        ("chapter-phone", dict(page_path=first, viewport={"width": 390, "height": 844})),
    ]:
        page, _, _ = _open(browser, server, **kwargs)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)
        width = page.evaluate("() => document.documentElement.scrollWidth")
        viewport = page.viewport_size["width"]
        page.context.close()
        assert width <= viewport + 1, f"{name}: page is {width}px wide in a {viewport}px viewport (horizontal scrolling)"


@pytest.mark.parametrize("query, chapter", [("LSTM", "chapters/09_lstm"), ("bifurcation", "chapters/03_dynamical_system")])
def test_search_finds(browser, server, query, chapter):
    page, errors, _ = _open(browser, server, f"search.html?q={query}")
    try:
        page.wait_for_selector("#search-results ul.search li", timeout=20000)
        hits = page.eval_on_selector_all("#search-results ul.search li a", "els => els.map(e => e.getAttribute('href'))")
        assert hits, f"search for {query!r} found nothing"
        if (HTML / f"{chapter}.html").exists():
            assert any(h.split("?")[0].split("#")[0].endswith(f"{chapter}.html") for h in hits), f"{query!r}: {chapter} not among {hits}"
    finally:
        page.context.close()


def test_dark_mode_toggle(browser, server):
    page, errors, _ = _open(browser, server, CHAPTERS[0] if CHAPTERS else "index.html")
    try:
        seen = set()
        for _ in range(3):  # the button cycles through light, dark and auto
            page.click("button.theme-switch-button")
            seen.add(page.evaluate("() => document.documentElement.dataset.theme"))
            if "dark" in seen:
                break
        assert "dark" in seen, f"the theme toggle never switched to dark mode (saw {seen})"
        background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        assert background not in ("rgb(255, 255, 255)", "rgba(0, 0, 0, 0)"), f"dark mode left a {background} background"
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "chapter-dark.png"))
        assert not [e for e in errors if e not in TOLERATED_CONSOLE]
    finally:
        page.context.close()
