"""Each chapter opens with a "Code for this chapter" line; it must match the library's layout.

Every module it names must exist, and every library module the chapter's code imports from
(other than the book's own ``nfcourse.book`` helpers) must be named there, so a reader who
follows the line finds the code the page runs.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("*.md"))
NAMED = re.compile(r"`(nfcourse(?:\.\w+)*)`")
IMPORTED = re.compile(r"^\s*from (nfcourse(?:\.\w+)*) import", re.M)
CODE = re.compile(r"```\{code-cell\}[^\n]*\n(.*?)```", re.S)


def code_line(text: str) -> str:
    """The paragraph that starts with "Code for this chapter" (or "... appendix")."""
    match = re.search(r"^Code for this (?:chapter|appendix):(.*?)(?:\n\n)", text, re.M | re.S)
    if match is None:
        raise AssertionError("no 'Code for this chapter:' paragraph")
    return match.group(1)


def resolves(dotted: str) -> bool:
    """True when ``dotted`` is a module, or an attribute of one (``nfcourse.flows.AffineCoupling``)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def covered(module: str, named: set[str]) -> bool:
    """A module counts as named when it, or a package above it, is named; a package imported
    for its re-exports (``from nfcourse.data import two_moons``) when a module in it is."""
    return any(module == n or module.startswith(n + ".") or n.startswith(module + ".")
               for n in named)


def missing_and_unnamed(text: str) -> tuple[list[str], list[str]]:
    named = set(NAMED.findall(code_line(text)))
    code = "\n".join(CODE.findall(text))
    used = {m for m in IMPORTED.findall(code) if m != "nfcourse" and not m.startswith("nfcourse.book")}
    return (sorted(n for n in named if not resolves(n)),
            sorted(m for m in used if not covered(m, named)))


@pytest.mark.parametrize("md", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_code_line_names_existing_modules_and_every_module_the_chapter_imports(md: Path) -> None:
    missing, unnamed = missing_and_unnamed(md.read_text(encoding="utf-8"))
    assert not missing, f"{md.name} names modules that do not exist: {missing}"
    assert not unnamed, f"{md.name} imports from modules its code line does not name: {unnamed}"


def test_the_check_catches_a_stale_name_and_an_unnamed_import() -> None:
    text = ("# T\n\nCode for this chapter: `nfcourse.cnf` (gone).\n\n"
            "```{code-cell} ipython3\nfrom nfcourse.ode.solvers import solve\n```\n")
    missing, unnamed = missing_and_unnamed(text)
    assert missing == ["nfcourse.cnf"]
    assert unnamed == ["nfcourse.ode.solvers"]
