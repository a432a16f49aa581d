"""Fixtures of the browser check; it runs only when asked for (``make browser``).

The unit run, ``pytest tests -n 2``, must not start a browser nor need a built book, so the
tests here are collected only when a path inside ``tests/browser`` is named on the command
line (``pytest tests/browser``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

import pagecheck
from bookinfo import BUILT_HTML, SCREENSHOTS

HERE = Path(__file__).resolve().parent


def _named_on_command_line(config: pytest.Config) -> bool:
    for arg in config.args:
        path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Skip this folder's files unless the command line named it (see the module docstring)."""
    return True if not _named_on_command_line(config) else None


@pytest.fixture(scope="session")
def built_html() -> Path:
    if not (BUILT_HTML / "index.html").exists():
        pytest.fail(f"no built book in {BUILT_HTML}: run `make html` first")
    return BUILT_HTML


@pytest.fixture(scope="session")
def screenshots() -> Path:
    # Fresh per run, so the artifact never shows a page that is no longer in the book.
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    return SCREENSHOTS


@pytest.fixture(scope="session")
def browser() -> Iterator[WebDriver]:
    with pagecheck.chromium() as driver:
        yield driver


@pytest.fixture(scope="session")
def book_url(built_html: Path) -> Iterator[str]:
    with pagecheck.serve(built_html) as url:
        yield url
