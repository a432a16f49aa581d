"""The static HTML check counts a chapter page's output figures against its record."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_html", ROOT / "tools" / "check_html.py")
check_html = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_html)  # type: ignore[union-attr]


def test_a_page_that_lost_its_figures_is_counted_short() -> None:
    page = "chapters/01-change-of-variables"
    want = check_html.record_figures(page)
    assert want is not None and want >= 3
    figure = '<img alt="_images/a.png" src="../_images/a.png" />'
    assert check_html.page_figures(figure * want) == want
    assert check_html.page_figures('<img src="../_static/logo.png" />') == 0
    assert check_html.record_figures("intro") is None  # a Markdown page has no record
