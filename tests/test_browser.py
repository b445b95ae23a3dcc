"""The built book as a reader meets it: every page opened offline in headless Chromium.

The book is served from ``_build/html`` by a web server on 127.0.0.1, and the browser may load
nothing else: any request to another host fails the page (the book must work from a USB stick).
On every page: no console error, every ``<img>`` loaded, the math typeset by MathJax (no raw
``\\(``), no missing glued value, no display equation wider than its column, no cell showing
stderr, every internal link and anchor resolving. A full-page screenshot of each page is saved
under ``_build/screenshots/`` for a person to look at.

The book must be built first (``make test`` builds it; so does ``make book``); a build older
than the chapters or the package is rebuilt here. The test installs nothing: it is skipped, with
the reason, when Chromium, its driver or selenium is missing (``.ci/run`` installs Debian's
``chromium`` and ``chromium-driver``).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

import pytest

from chapters import ROOT, toc_files

HTML = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html"))
SHOTS = ROOT / "_build" / "screenshots"
WIDTH, HEIGHT = 1280, 900  # a common laptop screen: the width the book is read at
CHROMIUM = [os.environ.get("CHROMIUM", ""), "/usr/bin/chromium", "/usr/bin/chromium-browser",
            shutil.which("chromium") or "", shutil.which("chromium-browser") or ""]
DRIVER = [os.environ.get("CHROMEDRIVER", ""), "/usr/bin/chromedriver", shutil.which("chromedriver") or ""]


def _first(paths: list[str]) -> str | None:
    return next((p for p in paths if p and Path(p).is_file() and os.access(p, os.X_OK)), None)


def _sources() -> list[Path]:
    files = [ROOT / "_config.yml", ROOT / "_toc.yml", *ROOT.glob("book/**/*.md"),
             *ROOT.glob("book/**/*.bib"), *ROOT.glob("src/mixedmodels/**/*.py")]
    return [f for f in files if f.exists()]


def _ensure_built() -> None:
    index = HTML / "index.html"
    if "BOOK_HTML" in os.environ:
        if not index.exists():
            pytest.fail(f"BOOK_HTML={HTML} has no index.html")
        return
    built = [p.stat().st_mtime for p in HTML.rglob("*.html")] if index.exists() else []
    if built and max(built) >= max(f.stat().st_mtime for f in _sources()):
        return
    book = Path(sys.executable).with_name("jupyter-book")
    command = [str(book) if book.exists() else "jupyter-book", "build", str(ROOT),
               "--warningiserror", "--nitpick", "--keep-going"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail("the book did not build:\n" + (done.stdout + done.stderr)[-4000:])


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the test reports what matters itself
        pass


@pytest.fixture(scope="module")
def server():
    _ensure_built()
    handler = functools.partial(_Quiet, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser(server):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    chromium, driver_path = _first(CHROMIUM), _first(DRIVER)
    if chromium is None or driver_path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser check: .ci/run installs chromium and chromium-driver")
        pytest.skip("no Chromium and chromedriver found (apt-get install chromium chromium-driver); "
                    "the browser check did not run")
    profile = tempfile.mkdtemp(prefix="book-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
                 f"--window-size={WIDTH},{HEIGHT}",
                 # Offline: no host name resolves but our own server's address.
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = webdriver.ChromeService(executable_path=driver_path)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def pages() -> list[str]:
    """Every HTML page of the book a reader can reach (not Sphinx's own index pages)."""
    skip = {"genindex.html", "search.html", "py-modindex.html"}
    found = [p.relative_to(HTML).as_posix() for p in HTML.rglob("*.html")
             if not p.relative_to(HTML).parts[0].startswith("_") and p.name not in skip]
    return sorted(found)


class _Anchors(HTMLParser):
    """The ids and the links of one HTML file."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        if tag in ("a", "link") and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag in ("img", "script") and attrs.get("src"):
            self.links.append(attrs["src"])


@functools.cache
def _parse(path: Path) -> _Anchors:
    parser = _Anchors()
    parser.feed(path.read_text(errors="replace"))
    return parser


def broken_links(page: str) -> list[str]:
    """Internal links and anchors of ``page`` that point at nothing."""
    here = HTML / page
    problems = []
    for link in _parse(here).links:
        parts = urlsplit(link)
        if parts.scheme or link.startswith("//"):
            continue  # external links are not followed offline
        target, fragment = urldefrag(link)
        path = here if not target else (here.parent / unquote(urlsplit(target).path)).resolve()
        if path.is_dir():
            path = path / "index.html"
        if not path.exists():
            problems.append(f"{link}: no file {path.relative_to(HTML.resolve()) if path.is_relative_to(HTML.resolve()) else path}")
            continue
        if fragment and path.suffix == ".html" and unquote(fragment) not in _parse(path).ids:
            problems.append(f"{link}: no anchor #{fragment} in {path.name}")
    return problems


# What each page is asked, in the browser, once MathJax has finished typesetting.
PAGE_CHECKS = r"""
const done = arguments[arguments.length - 1];
const report = () => {
  const out = {};
  out.images = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))
      .map(i => i.getAttribute('src'));
  const math = [...document.querySelectorAll('.math')];
  out.math = math.length;
  out.untypeset = math.filter(m => !m.querySelector('mjx-container'))
      .map(m => m.textContent.slice(0, 60));
  const article = document.querySelector('article') || document.body;
  const text = article.innerText;
  out.raw_math = ['\\(', '\\[', '$$'].filter(s => text.includes(s));
  out.glue_missing = /glue not found|\{glue:/i.test(text);
  out.stderr = [...document.querySelectorAll('.output.stderr, .stderr')]
      .map(e => e.innerText.slice(0, 120));
  out.overflow = [...document.querySelectorAll('mjx-container[display="true"]')].map(m => {
      const box = m.parentElement.getBoundingClientRect();
      const w = m.querySelector('mjx-math').getBoundingClientRect().width;
      return {w: Math.round(w), col: Math.round(box.width), tex: m.parentElement.textContent.slice(0, 40)};
  }).filter(o => o.w > o.col + 1);
  out.height = Math.max(document.body.scrollHeight, document.documentElement.scrollHeight);
  done(out);
};
const start = Date.now();
const wait = () => (window.MathJax && MathJax.startup && MathJax.startup.promise)
    ? MathJax.startup.promise.then(report, e => done({error: String(e)}))
    : ((document.querySelector('.math') && Date.now() - start < 20000) ? setTimeout(wait, 100) : report());
if (document.readyState === 'complete') wait(); else window.addEventListener('load', wait);
"""


def _network_requests(driver) -> list[str]:
    import json

    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _screenshot(driver, page: str, height: int) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    name = page.replace("/", "__").removesuffix(".html") + ".png"
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": WIDTH, "height": min(height, 30000), "deviceScaleFactor": 1, "mobile": False})
    try:
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        import base64

        (SHOTS / name).write_bytes(base64.b64decode(shot["data"]))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _check_page(driver, server: str, page: str) -> list[str]:
    driver.get_log("browser")
    driver.get_log("performance")  # start each page with empty logs
    driver.get(f"{server}/{page}")
    result = driver.execute_async_script(PAGE_CHECKS)
    problems = []
    if "error" in result:
        problems.append(f"MathJax failed: {result['error']}")
    else:
        if result["images"]:
            problems.append(f"images that did not load: {result['images']}")
        if result["untypeset"]:
            problems.append(f"{len(result['untypeset'])} of {result['math']} math elements not typeset, "
                            f"first: {result['untypeset'][:3]}")
        if result["raw_math"]:
            problems.append(f"raw TeX delimiters in the text: {result['raw_math']}")
        if result["glue_missing"]:
            problems.append("a glued value is missing")
        if result["stderr"]:
            problems.append(f"cells showing stderr: {result['stderr']}")
        if result["overflow"]:
            problems.append(f"display equations wider than the column: {result['overflow']}")
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    if errors:
        problems.append(f"console errors: {errors}")
    offline = [u for u in _network_requests(driver)
               if not u.startswith((server, "data:", "blob:", "about:", "chrome"))]
    if offline:
        problems.append(f"requests off this machine (the book must work offline): {sorted(set(offline))}")
    problems += [f"broken link {b}" for b in broken_links(page)]
    _screenshot(driver, page, result.get("height", HEIGHT))
    return problems


@pytest.mark.chapters
def test_every_page_in_the_browser(browser, server):
    found = pages()
    missing = [e for e in toc_files() if f"{e}.html" not in found]
    assert not missing, f"chapters of _toc.yml without a page in {HTML}: {missing}"
    report = {}
    for page in found:
        problems = _check_page(browser, server, page)
        if problems:
            report[page] = problems
    assert not report, "\n".join(f"{page}:\n  " + "\n  ".join(p) for page, p in report.items())
