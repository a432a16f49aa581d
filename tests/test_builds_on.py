"""Every chapter says, right under its title, which chapters it builds on.

A reader who lands on a chapter from a search engine sees at once what to read first; the
links must point at pages of the book.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("*.md"))
LINE = re.compile(r"^# [^\n]+\n\n(\*\*Builds on:\*\*.*?)\n\n", re.M | re.S)


def toc_chapters() -> set[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return {Path(f).name for f in files if f.startswith("chapters/")}


def builds_on(text: str) -> str | None:
    """The "Builds on" paragraph right after the title, or ``None``."""
    match = LINE.search(text)
    return match.group(1) if match else None


def targets(paragraph: str) -> list[str]:
    return re.findall(r"\{doc\}`([^`<>]+)`", paragraph)


@pytest.mark.parametrize("md", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_says_what_it_builds_on(md: Path) -> None:
    paragraph = builds_on(md.read_text(encoding="utf-8"))
    assert paragraph, f"{md.name}: no '**Builds on:**' paragraph right after the title"
    linked = targets(paragraph)
    assert md.stem not in linked, f"{md.name} says it builds on itself"
    unknown = [t for t in linked if t not in toc_chapters()]
    assert not unknown, f"{md.name}: builds on pages not in _toc.yml: {unknown}"
    if md.stem != "01-change-of-variables":  # the first chapter builds on no chapter
        assert linked or "chapters" in paragraph, f"{md.name}: names no chapter"


def test_the_check_catches_a_missing_line_and_a_bad_link() -> None:
    assert builds_on("# T\n\nCode for this chapter: x.\n\n") is None
    paragraph = builds_on("# T\n\n**Builds on:** {doc}`99-gone` (x).\n\nText.\n")
    assert paragraph and targets(paragraph) == ["99-gone"]
    assert "99-gone" not in toc_chapters()
