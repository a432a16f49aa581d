"""The built book in a real browser: every page of the table of contents, search, file://.

Needs ``_build/html`` (``make html``) and Debian's chromium; run by ``make browser``.
Screenshots of every page land in ``_build/screenshots/`` (a CI artifact).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from selenium.webdriver.remote.webdriver import WebDriver

import pagecheck
from bookinfo import ROOT, expected_for, notebook_pages, toc_pages

SEARCH_TERM = "Jacobian"


def _shot(screenshots: Path, name: str) -> Path:
    return screenshots / f"{name.replace('/', '-')}.png"


@pytest.mark.parametrize("page", toc_pages())
def test_page_works_in_a_browser(page: str, browser: WebDriver, book_url: str,
                                 screenshots: Path) -> None:
    problems = pagecheck.check_page(browser, f"{book_url}{page}.html", expected_for(page),
                                    screenshot=_shot(screenshots, page))
    assert not problems, "\n".join(problems)


def test_search_finds_results(browser: WebDriver, book_url: str, screenshots: Path) -> None:
    problems = pagecheck.search_problems(browser, f"{book_url}search.html", SEARCH_TERM)
    pagecheck.save_screenshot(browser, _shot(screenshots, f"search-{SEARCH_TERM}"))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", toc_pages())
def test_page_works_from_a_file_url(page: str, browser: WebDriver, built_html: Path) -> None:
    """Opened from disk with no server and no network: math, figures, dropdowns, buttons."""
    # chromium refuses fetch() of a file:// URL, so the download link is checked, not fetched.
    # No screenshot: it would show the same page as the one taken over http.
    expected = pagecheck.Expected(**{**expected_for(page).__dict__, "fetch_download": False})
    problems = pagecheck.check_page(browser, (built_html / f"{page}.html").as_uri(), expected)
    assert not problems, "\n".join(problems)


def test_search_works_from_a_file_url(browser: WebDriver, built_html: Path,
                                      screenshots: Path) -> None:
    problems = pagecheck.search_problems(browser, (built_html / "search.html").as_uri(),
                                         SEARCH_TERM)
    pagecheck.save_screenshot(browser, _shot(screenshots, f"file-search-{SEARCH_TERM}"))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", notebook_pages())
def test_executed_notebook_is_published(page: str, built_html: Path) -> None:
    """The download button's file is the chapter's executed record, outputs included."""
    published = built_html / "_sources" / f"{page}.ipynb"
    assert published.exists(), f"{published} missing from the build"
    nb = nbformat.read(published, as_version=4)
    record = nbformat.read(ROOT / f"{page}.ipynb", as_version=4)
    assert [c.source for c in nb.cells] == [c.source for c in record.cells], \
        f"{published} is not the current record {page}.ipynb: run `make html`"
    unexecuted = [i for i, c in enumerate(nb.cells)
                  if c.cell_type == "code" and c.source.strip() and c.execution_count is None]
    assert not unexecuted, f"{published}: code cells {unexecuted} have no outputs"
