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
    """True when ``dotted`` is a module or an attribute of one (``nfcourse.flows.Planar``)."""
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
    used = {m for m in IMPORTED.findall(code)
            if m != "nfcourse" and not m.startswith("nfcourse.book")}
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


MAX_CELL_LINES = 25
# Functions and classes a chapter may define: the ones it teaches writing, and in the appendix
# the peer-library code under comparison (only that page may import the peers).
TAUGHT = {
    "01-change-of-variables": {"SignFlipped"},            # writing a flow
    "04-continuous-flows": {"field", "rk4_polynomial"},   # writing a field and a solver
    "06-flow-matching": {"fm_batch_loss"},                # the FM loss, written out
    "07-jko": {"numerical_jko_step"},                     # one JKO step by brute force
    "09-self-test-and-audit": {"forbidden"},              # the exercise
    "appendix-performance": {"build_nfcourse", "build_zuko", "build_normflows",
                             "ContextFreeMLP", "build_nflows", "nfcourse_loss",
                             "torchcfm_loss", "GeneralScaleCoupling",
                             "build_nfcourse_small_init", "held_out_kl", "race", "nfcourse_ot_loss",
                             "torchcfm_ot_loss", "MirroredField", "ms_normflows",
                             "ms_op_groups", "build_ar"},
}


def cells(text: str) -> list[list[str]]:
    """The code lines of each code cell, without its option lines and outer blank lines."""
    out = []
    for body in CODE.findall(text):
        lines = [line for line in body.split("\n") if not line.startswith(":")]
        while lines and not lines[0].strip():
            lines.pop(0)
        while lines and not lines[-1].strip():
            lines.pop()
        out.append(lines)
    return out


def cell_problems(stem: str, text: str) -> list[str]:
    problems = []
    for i, lines in enumerate(cells(text)):
        if len(lines) > MAX_CELL_LINES:
            problems.append(f"code cell {i} has {len(lines)} lines (at most {MAX_CELL_LINES})")
        for line in lines:
            match = re.match(r"(?:def|class) (\w+)", line)  # top level: methods belong to it
            if match and match.group(1) not in TAUGHT.get(stem, set()):
                problems.append(f"code cell {i} defines {match.group(1)}: move it to the "
                                "library, or list it in TAUGHT if the chapter teaches it")
    return problems


@pytest.mark.parametrize("md", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_cells_are_short_and_define_only_what_the_chapter_teaches(md: Path) -> None:
    assert not cell_problems(md.stem, md.read_text(encoding="utf-8"))


def test_the_cell_check_catches_a_long_cell_and_an_untaught_helper() -> None:
    body = "\n".join(f"x{i} = {i}" for i in range(26))
    text = (f"```{{code-cell}} ipython3\n:tags: [remove-cell]\n\n{body}\n```\n"
            "```{code-cell} ipython3\ndef helper():\n    return 1\n```\n")
    problems = cell_problems("02-coupling-flows", text)
    assert any("26 lines" in p for p in problems)
    assert any("defines helper" in p for p in problems)
    assert not cell_problems("01-change-of-variables",
                             "```{code-cell} ipython3\nclass SignFlipped:\n    pass\n```\n")
