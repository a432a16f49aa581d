"""Check pages of the built book in a real browser (Debian's chromium, driven by selenium).

Every check is a function that returns a list of problems (empty when the page is fine), so
the run over the real book (``test_book.py``) and the run over deliberately broken copies of a
page (``test_pagecheck.py``) use exactly the same code.
"""

from __future__ import annotations

import base64
import functools
import http.server
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

# Debian's packages chromium and chromium-driver (`make browser` installs them when missing).
CHROMIUM = Path(os.environ.get("NFCOURSE_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("NFCOURSE_CHROMEDRIVER", "/usr/bin/chromedriver"))

# Headless, no sandbox (CI runs as root), and every background service that would try to
# reach Google switched off: with no network those attempts flood the log and slow start-up.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1366,900",
    # Every host but the local server fails to resolve, so a page that needs the network
    # (a CDN script, a remote font) fails here in the same way on a machine that has one.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)
SCRIPT_TIMEOUT_S = 30
# Long chapters are cut here: the top of a page is what a reviewer of an artifact looks at,
# and a 30 000-pixel PNG costs seconds to encode.
SCREENSHOT_MAX_HEIGHT_PX = 12_000


@dataclass(frozen=True)
class Expected:
    """What a page of the book must offer besides working content."""

    repository_url: str | None = None  # the repository button's target (every page)
    notebook: str | None = None  # e.g. "chapters/01-x.ipynb": the page is a notebook
    binderhub_url: str = "https://mybinder.org"
    colab_url: str = "https://colab.research.google.com"
    fetch_download: bool = True  # fetch the download link (impossible from file://)
    animations: int = 0  # animation players the page must show (as many as its record has)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # one line per request would bury pytest's report


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (a free port) from a thread; yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def chromium() -> Iterator[WebDriver]:
    """Start headless chromium with a throw-away profile; quit it on exit."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not installed: "
                           "apt-get install -y chromium chromium-driver")
    with tempfile.TemporaryDirectory(prefix="nfcourse-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        driver.set_script_timeout(SCRIPT_TIMEOUT_S)
        driver.set_page_load_timeout(SCRIPT_TIMEOUT_S)
        try:
            yield driver
        finally:
            driver.quit()


def open_page(driver: WebDriver, url: str) -> None:
    """Load ``url`` as a first-time reader would, with a console log of its own."""
    # Forget what earlier pages stored (the theme keeps its mode in localStorage), so an
    # error a page raises on a first visit is found whichever page the run opened first.
    driver.execute_script("try { localStorage.clear(); sessionStorage.clear(); } catch (e) {}")
    driver.get_log("browser")  # drain: the entries after this belong to ``url``
    driver.get(url)


def _is_implicit_favicon(entry: dict[str, Any]) -> bool:
    # A page that declares no icon gets /favicon.ico requested by the browser itself; the book
    # has none, and the 404 says nothing about the page. A declared icon that fails still counts.
    return entry.get("source") == "network" and "/favicon.ico " in entry.get("message", "")


def console_problems(driver: WebDriver) -> list[str]:
    """SEVERE console entries since the last call: script errors, failed loads, console.error."""
    return [f"console error: {e['message']}" for e in driver.get_log("browser")
            if e.get("level") == "SEVERE" and not _is_implicit_favicon(e)]


_WAIT_FOR_MATHJAX = """
const done = arguments[arguments.length - 1];
(function poll() {
  const mj = window.MathJax;
  if (mj && mj.startup && mj.startup.promise) {
    mj.startup.promise.then(() => done("typeset"), (e) => done("failed: " + e));
  } else if (!document.querySelector('script[src*="mathjax" i]')) {
    done("absent");
  } else if (document.readyState === "complete") {
    done("not started");  // its deferred script has run, or failed to load
  } else {
    setTimeout(poll, 50);
  }
})();
"""


def mathjax_state(driver: WebDriver) -> str:
    """Wait for MathJax's first typeset: 'typeset', 'absent', 'not started' or 'failed: ...'."""
    return str(driver.execute_async_script(_WAIT_FOR_MATHJAX))


# For every element Sphinx marked as math: its TeX, whether MathJax rendered it, and the
# MathML MathJax produced for each formula (errors show up there, not in the TeX).
_MATH_REPORT = """
const elements = Array.from(document.querySelectorAll(".math"));
const mj = window.MathJax;
const items = mj && mj.startup && mj.startup.document ? Array.from(mj.startup.document.math) : [];
return {
  untypeset: elements.filter(e => !e.querySelector("mjx-container"))
                     .map(e => e.textContent.trim().slice(0, 80)),
  mathml: items.map(item => [item.math.slice(0, 80), mj.startup.toMML(item.root)]),
};
"""


def math_problems(driver: WebDriver) -> list[str]:
    """Math that MathJax did not typeset, typeset as an error, or with an undefined macro."""
    state = mathjax_state(driver)
    report = driver.execute_script(_MATH_REPORT)
    problems: list[str] = []
    if report["untypeset"] and state != "typeset":
        problems.append(f"MathJax {state}: {len(report['untypeset'])} formula(s) not rendered")
    for tex in report["untypeset"] if state == "typeset" else []:
        problems.append(f"math not typeset: {tex}")
    for tex, mathml in report["mathml"]:
        if "<merror" in mathml:
            problems.append(f"MathJax error in {tex!r}")
        # MathJax's noundefined extension renders an unknown macro as its name in red text
        # instead of an error, so look for that form as well.
        elif '<mtext mathcolor="red">\\' in mathml:
            problems.append(f"undefined TeX macro in {tex!r}")
    return problems


_LOAD_IMAGES = """
const done = arguments[arguments.length - 1];
const images = Array.from(document.images);
images.forEach(img => { img.loading = "eager"; });  // lazy images would wait for a scroll
Promise.all(images.map(img => img.complete ? null : new Promise(ok => {
  img.addEventListener("load", ok); img.addEventListener("error", ok);
}))).then(() => done(images.filter(img => img.naturalWidth === 0)
                             .map(img => img.getAttribute("src"))));
"""


def image_problems(driver: WebDriver) -> list[str]:
    """Images that did not load (a natural width of zero once loading has settled)."""
    return [f"image not loaded: {src}" for src in driver.execute_async_script(_LOAD_IMAGES)]


_DROPDOWN_STATE = """
const details = arguments[0];
const summary = details.querySelector(":scope > summary");
return {open: details.open, label: summary ? summary.textContent.trim().slice(0, 60) : "",
        shown: Array.from(details.children).filter(c => c.tagName !== "SUMMARY")
                    .some(c => c.getBoundingClientRect().height > 0)};
"""


def dropdown_problems(driver: WebDriver) -> list[str]:
    """Each dropdown of the page's content must toggle, and show its content, on a click."""
    problems: list[str] = []
    for details in driver.find_elements("css selector", "article details"):
        before = driver.execute_script(_DROPDOWN_STATE, details)
        # Centred, so the sticky header cannot be what intercepts the click.
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", details)
        try:
            details.find_element("css selector", ":scope > summary").click()
        except WebDriverException as exc:
            problems.append(f"dropdown {before['label']!r} cannot be clicked: {exc.msg}")
            continue
        after = driver.execute_script(_DROPDOWN_STATE, details)
        if after["open"] == before["open"]:
            problems.append(f"dropdown {before['label']!r} did not toggle on click")
        elif after["open"] and not after["shown"]:
            problems.append(f"dropdown {before['label']!r} opened but shows nothing")
    return problems


_FETCH_NOTEBOOK = """
const done = arguments[arguments.length - 1];
fetch(arguments[0]).then(r => r.ok ? r.json() : {status: r.status})
  .then(j => done(j.cells ? {cells: j.cells.length} : {error: "HTTP " + j.status}),
        e => done({error: String(e)}));
"""


def _links(driver: WebDriver, prefix: str) -> list[str]:
    return [a.get_attribute("href") or "" for a in driver.find_elements(
        "css selector", f'a[href^="{prefix}"]')]


def button_problems(driver: WebDriver, expected: Expected) -> list[str]:
    """The repository button, and on notebook pages the launch and download buttons."""
    problems: list[str] = []
    if expected.repository_url:
        repo = driver.find_elements("css selector", "a.btn-source-repository-button")
        if not any(a.get_attribute("href") == expected.repository_url and a.is_displayed()
                   for a in repo):
            problems.append(f"no visible repository button to {expected.repository_url}")
    if not expected.notebook:
        return problems
    toggles = driver.find_elements("css selector", ".dropdown-launch-buttons > button")
    if not any(t.is_displayed() for t in toggles):
        problems.append("no visible launch (rocket) button")
    for name, prefix in (("Binder", expected.binderhub_url.rstrip("/") + "/v2/gh/"),
                         ("Colab", expected.colab_url.rstrip("/") + "/github/")):
        if not any(expected.notebook in href for href in _links(driver, prefix)):
            problems.append(f"no {name} launch link for {expected.notebook}")
    downloads = [a.get_attribute("href") or "" for a in driver.find_elements(
        "css selector", "a.btn-download-source-button")]
    wanted = f"_sources/{expected.notebook}"
    if not any(href.endswith(wanted) for href in downloads):
        problems.append(f"download button does not offer {wanted} (has {downloads})")
    elif expected.fetch_download:
        got = driver.execute_async_script(_FETCH_NOTEBOOK, downloads[0])
        if "error" in got or got["cells"] == 0:
            problems.append(f"downloaded notebook {downloads[0]} is unusable: {got}")
    return problems


# The player's state lives on its element (nfcourse.book.animation): data-frame, data-playing;
# the frame displayed is the <img>'s current source.
_ANIMATION_STATE = """
const fig = arguments[0], img = fig.querySelector("img.nf-animation-frame");
return {frame: fig.dataset.frame, playing: fig.dataset.playing, src: img ? img.src : null,
        loaded: !!img && img.complete && img.naturalWidth > 0,
        fps: JSON.parse(fig.querySelector(".nf-animation-data").textContent).fps};
"""

_WAIT_FOR_NEW_FRAME = """
const [fig, before, timeout] = arguments, done = arguments[arguments.length - 1];
const img = fig.querySelector("img.nf-animation-frame"), start = Date.now();
(function poll() {
  if (img.src !== before && img.complete) done(true);
  else if (Date.now() - start > timeout) done(false);
  else setTimeout(poll, 20);
})();
"""

_SET_SLIDER = """
const slider = arguments[0].querySelector(".nf-animation-slider");
slider.value = arguments[1];
slider.dispatchEvent(new Event("input"));
"""


def animation_problems(driver: WebDriver, expected: int,
                       shots: Path | None = None) -> list[str]:
    """Every animation player must play: a click on play changes the displayed frame, a
    second click pauses it, and the slider shows the frame it is set to.

    The page must have ``expected`` players. With ``shots``, two frames of each player are
    photographed: ``{shots}-animation-{i}-frame-{k}.png`` (the still frame, and one reached
    by playing).
    """
    players = driver.find_elements("css selector", "figure.nf-animation")
    problems = [] if len(players) == expected else [
        f"{len(players)} animation player(s) on the page, {expected} in the executed record"]
    for i, fig in enumerate(players):
        name = f"animation {i + 1} ({fig.get_attribute('id')})"
        before = driver.execute_script(_ANIMATION_STATE, fig)
        if not before["loaded"]:
            problems.append(f"{name}: its still frame is not displayed")
            continue
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", fig)
        if shots is not None:
            _element_shot(fig, shots, i, before["frame"])
        interval_ms = 1000 / before["fps"]
        try:
            fig.find_element("css selector", ".nf-animation-play").click()
        except WebDriverException as exc:
            problems.append(f"{name}: play cannot be clicked: {exc.msg}")
            continue
        if not driver.execute_async_script(_WAIT_FOR_NEW_FRAME, fig, before["src"],
                                           3 * interval_ms + 1000):
            problems.append(f"{name}: play did not change the displayed frame")
            continue
        fig.find_element("css selector", ".nf-animation-play").click()  # pause
        paused = driver.execute_script(_ANIMATION_STATE, fig)
        if shots is not None:
            _element_shot(fig, shots, i, paused["frame"])
        # still playing, it would show a new frame within one interval (plus timer slack)
        if driver.execute_async_script(_WAIT_FOR_NEW_FRAME, fig, paused["src"],
                                       1.2 * interval_ms + 100):
            problems.append(f"{name}: pause did not stop it")
        driver.execute_script(_SET_SLIDER, fig, 0)
        if driver.execute_script(_ANIMATION_STATE, fig)["frame"] != "0":
            problems.append(f"{name}: the slider does not select the frame")
        driver.execute_script(_SET_SLIDER, fig, before["frame"])  # the page's screenshot
    return problems


def _element_shot(element: Any, shots: Path, i: int, frame: str) -> None:
    path = shots.parent / f"{shots.name}-animation-{i + 1}-frame-{frame}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(element.screenshot_as_png)


def save_screenshot(driver: WebDriver, path: Path) -> None:
    """A PNG of the page from the top, as tall as the page (up to a limit)."""
    driver.execute_script("window.scrollTo(0, 0);")
    width = int(driver.execute_script("return window.innerWidth;"))
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    height = min(int(size["height"]) + 1, SCREENSHOT_MAX_HEIGHT_PX)
    # Lay the page out in a window as tall as the page and photograph that window: capturing
    # beyond the viewport instead draws the theme's sticky sidebar and header out of place.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    try:
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


def check_page(driver: WebDriver, url: str, expected: Expected,
               screenshot: Path | None = None) -> list[str]:
    """Everything a reader needs from one page; returns the problems found."""
    try:
        open_page(driver, url)
    except WebDriverException as exc:
        return [f"page did not load: {exc.msg}"]
    problems = math_problems(driver)
    problems += image_problems(driver)
    problems += button_problems(driver, expected)
    problems += dropdown_problems(driver)  # opens them, so the screenshot shows answers
    problems += animation_problems(driver, expected.animations,
                                   shots=screenshot.with_suffix("") if screenshot else None)
    if screenshot is not None:
        save_screenshot(driver, screenshot)
    # Last, so errors raised by the clicks and fetches above are counted too.
    return problems + console_problems(driver)


_SEARCH_DONE = """
const done = arguments[arguments.length - 1];
(function poll() {
  const summary = document.querySelector("#search-results .search-summary");
  if (summary && summary.textContent.trim()) {
    done(document.querySelectorAll("#search-results ul.search li").length);
  } else if (document.readyState === "complete" && typeof Search === "undefined") {
    // searchtools.js never loaded. (Its `const Search` is a global binding but not a
    // property of window, so `window.Search` would always be undefined.)
    done(-1);
  } else {
    setTimeout(poll, 50);
  }
})();
"""


# From file:// chromium refuses the fetch() with which Sphinx's search loads a snippet of each
# result page (CORS, origin 'null'); the results still list. Only these entries are forgiven.
_FILE_URL_SNIPPET_FETCH = (
    r"^file://\S+ - Access to fetch at 'file://\S+\.html' from origin 'null' has been blocked",
    r"^file://\S+\.html - Failed to load resource: net::ERR_FAILED$",
    r"^file://\S+/searchtools\.js\S* [\d:]+ Uncaught \(in promise\) TypeError: Failed to fetch$",
)


def search_problems(driver: WebDriver, search_page_url: str, term: str) -> list[str]:
    """The search page must find ``term`` (Sphinx searches its local index, no server)."""
    try:
        open_page(driver, f"{search_page_url}?q={quote(term)}")
        found = int(driver.execute_async_script(_SEARCH_DONE))
    except WebDriverException as exc:
        return [f"search for {term!r} did not finish: {exc.msg}"]
    problems = [] if found > 0 else [f"search for {term!r} found nothing ({found})"]
    errors = console_problems(driver)
    if search_page_url.startswith("file:"):
        errors = [e for e in errors if not any(
            re.search(pattern, e.removeprefix("console error: "))
            for pattern in _FILE_URL_SNIPPET_FETCH)]
    return problems + errors
