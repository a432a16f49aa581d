"""What the book says about itself: its pages (``_toc.yml``) and its buttons (``_config.yml``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import yaml

import pagecheck

ROOT = Path(__file__).resolve().parent.parent.parent
BUILT_HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"


def _check_html() -> Any:
    # tools/ is not a package; reuse the static HTML check's code so both checks agree.
    spec = importlib.util.spec_from_file_location("check_html", ROOT / "tools" / "check_html.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def toc_pages() -> list[str]:
    """The pages of ``_toc.yml`` without suffix (``intro``, ``chapters/01-...``)."""
    return list(_check_html().toc_pages())


def notebook_pages() -> list[str]:
    """The pages rendered from an executed ``.ipynb`` record: the chapters."""
    return [p for p in toc_pages() if (ROOT / f"{p}.ipynb").exists()]


def record_animations(page: str) -> int:
    """How many animation players the page's executed record shows (0 for other pages)."""
    return int(_check_html().record_animations(page))


def book_config() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "_config.yml").read_text()))


def expected_for(page: str, config: dict[str, Any] | None = None) -> pagecheck.Expected:
    """What ``page`` must offer: notebook pages also get launch and download buttons."""
    config = book_config() if config is None else config
    launch = config.get("launch_buttons", {})
    use_repo = config.get("html", {}).get("use_repository_button", False)
    return pagecheck.Expected(
        repository_url=config["repository"]["url"] if use_repo else None,
        notebook=f"{page}.ipynb" if page in notebook_pages() else None,
        binderhub_url=launch.get("binderhub_url", pagecheck.Expected.binderhub_url),
        colab_url=launch.get("colab_url", pagecheck.Expected.colab_url),
        animations=record_animations(page),
    )
