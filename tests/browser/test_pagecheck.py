"""The browser check fails on broken pages: each check is shown to catch its own breakage.

A copy of a built chapter page is broken in one way at a time (a missing image, bad TeX, a
script error, a dead dropdown, a missing button, ...) and checked with the functions the real
run uses; the unbroken copy, checked the same way, must pass.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

import pagecheck
from bookinfo import expected_for, notebook_pages

PAGE = notebook_pages()[0]  # a chapter: it has math, figures, dropdowns and launch buttons
UP = "../" * PAGE.count("/")  # from the page's folder back to the root of the build


def _inject_after_title(fragment: str) -> Callable[[str], str]:
    return lambda html: html.replace("</h1>", "</h1>" + fragment, 1)


def _math(tex: str) -> str:
    return f'<p><span class="math notranslate nohighlight">\\({tex}\\)</span></p>'


# name -> (how the page is broken, what the check must then report)
BREAKAGES: dict[str, tuple[Callable[[str], str], str]] = {
    "missing image": (lambda h: h.replace(f'src="{UP}_images/', f'src="{UP}_images/gone-', 1),
                      "image not loaded"),
    "undefined macro": (_inject_after_title(_math(r"\badmacro{x}")), "undefined TeX macro"),
    "TeX error": (_inject_after_title(_math("x^")), "MathJax error"),
    "unbalanced TeX": (_inject_after_title(_math(r"\frac{a")), "math not typeset"),
    "MathJax missing": (lambda h: h.replace("mathjax/tex-chtml.js", "mathjax/gone.js"),
                        "MathJax not started"),
    # The reader has no network: a page that needs a CDN must fail here, not only online.
    "MathJax from a CDN": (lambda h: h.replace(f'src="{UP}_static/mathjax/tex-chtml.js"',
                                               'src="https://cdn.jsdelivr.net/npm/mathjax@3/'
                                               'es5/tex-chtml.js"'),
                           "MathJax not started"),
    "stylesheet from a CDN": (lambda h: h.replace("</head>", (
        '<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/x@1/x.css"></head>')),
        "ERR_NAME_NOT_RESOLVED"),
    "script error": (lambda h: h.replace("</body>", "<script>noSuchFunction();</script></body>"),
                     "console error"),
    # A handler that swallows clicks on dropdown headers, as a broken theme script would.
    "dead dropdowns": (lambda h: h.replace("</body>", (
        "<script>document.addEventListener('click', e => {"
        " if (e.target.closest('summary')) e.preventDefault(); }, true);</script></body>")),
        "did not toggle"),
    "no Binder link": (lambda h: h.replace('href="https://mybinder.org/', 'href="https://x.invalid/'),
                       "no Binder launch link"),
    "no Colab link": (lambda h: h.replace('href="https://colab.research.google.com/',
                                          'href="https://x.invalid/'),
                      "no Colab launch link"),
    "wrong download": (lambda h: h.replace(f"_sources/{PAGE}.ipynb", "_sources/gone.ipynb"),
                       "download button does not offer"),
    "no repository button": (lambda h: h.replace("btn-source-repository-button", "btn-gone"),
                             "no visible repository button"),
    # A player whose script never wires its buttons: the still frame shows, play does nothing.
    "frozen animation": (lambda h: h.replace('root.dataset.ready = "1";', "return;"),
                         "play did not change the displayed frame"),
    "lost animation": (lambda h: h.replace('<figure class="nf-animation"', '<figure class="x"'),
                       "animation player(s) on the page"),
}


@pytest.fixture(scope="module")
def site(built_html: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the build, so broken pages never touch ``_build/html``."""
    copy = tmp_path_factory.mktemp("site") / "html"
    shutil.copytree(built_html, copy)
    return copy


@pytest.fixture(scope="module")
def site_url(site: Path) -> Iterator[str]:
    with pagecheck.serve(site) as url:
        yield url


def _check_variant(browser: WebDriver, site: Path, site_url: str, name: str,
                   breakage: Callable[[str], str]) -> list[str]:
    original = (site / f"{PAGE}.html").read_text(encoding="utf-8")
    broken = breakage(original)
    assert broken != original, f"breakage {name!r} no longer applies to {PAGE}.html"
    variant = PAGE + "-" + re.sub(r"\W+", "-", name)
    (site / f"{variant}.html").write_text(broken, encoding="utf-8")
    return pagecheck.check_page(browser, f"{site_url}{variant}.html", expected_for(PAGE))


def test_unbroken_copy_passes(browser: WebDriver, site_url: str) -> None:
    """The control: the same page, copied but not broken, has no problems."""
    problems = pagecheck.check_page(browser, f"{site_url}{PAGE}.html", expected_for(PAGE))
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("name", BREAKAGES)
def test_breakage_is_reported(name: str, browser: WebDriver, site: Path,
                              site_url: str) -> None:
    breakage, report = BREAKAGES[name]
    problems = _check_variant(browser, site, site_url, name, breakage)
    assert any(report in p for p in problems), f"{name}: expected {report!r} in {problems}"


def test_search_without_the_term_is_reported(browser: WebDriver, built_html: Path,
                                             tmp_path: Path) -> None:
    copy = tmp_path / "html"
    shutil.copytree(built_html, copy)
    index = copy / "searchindex.js"
    original = index.read_text(encoding="utf-8")
    scrubbed = re.sub("jacobian", "qqqqqqqq", original, flags=re.IGNORECASE)
    assert scrubbed != original, "the search index no longer contains 'Jacobian'"
    index.write_text(scrubbed, encoding="utf-8")
    with pagecheck.serve(copy) as url:
        problems = pagecheck.search_problems(browser, f"{url}search.html", "Jacobian")
    assert any("found nothing" in p for p in problems), problems


def test_search_page_errors_are_reported_from_file_urls(browser: WebDriver, built_html: Path,
                                                        tmp_path: Path) -> None:
    """From file:// only the refused snippet fetches are forgiven, not other errors."""
    copy = tmp_path / "html"
    shutil.copytree(built_html, copy)
    page = copy / "search.html"
    page.write_text(page.read_text(encoding="utf-8").replace(
        "</body>", "<script>noSuchFunction();</script></body>"), encoding="utf-8")
    problems = pagecheck.search_problems(browser, page.as_uri(), "Jacobian")
    assert any("noSuchFunction" in p for p in problems), problems
