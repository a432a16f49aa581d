"""Fixtures of the PDF check; it runs only when asked for (``make pdf-check``).

The unit run, ``pytest tests -n 2``, must not need a built book, its PDF or a browser, so the
tests here are collected only when a path inside ``tests/pdf`` is named on the command line
(``pytest tests/pdf``), as in ``tests/browser``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Skip this folder's files unless the command line named it (see the module docstring)."""
    for arg in config.args:
        path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return None
    return True


@pytest.fixture(scope="session")
def built_html() -> Path:
    html = ROOT / "_build" / "html"
    if not (html / "index.html").exists():
        pytest.fail(f"no built book in {html}: run `make html` first")
    return html

