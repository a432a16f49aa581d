"""Keep each chapter's executed record (``.ipynb``) in step with its source (``.md``).

A chapter is written as a MyST markdown notebook ``chapters/NN-name.md``. Its executed copy
``chapters/NN-name.ipynb`` is committed: the book renders it, readers download it, Binder and
Colab open it, and nbval re-runs it in CI and compares its deterministic outputs.

    python tools/notebooks.py check            # fail if any .ipynb is missing or stale
    python tools/notebooks.py stale            # print the stale sources, one a line
    python tools/notebooks.py execute [MD ...] # execute sources into their .ipynb (all if none)

"Stale" means the cells (type, source, tags) of the ``.ipynb`` differ from the ``.md``: the
record was not produced by the current source. Outputs are compared by nbval, not here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"
TIMEOUT_PER_CELL_S = 1800


def sources() -> list[Path]:
    return sorted(CHAPTERS.glob("*.md"))


def record_of(md: Path) -> Path:
    return md.with_suffix(".ipynb")


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.cell_type, c.source.strip(), tuple(c.get("metadata", {}).get("tags", [])))
            for c in nb.cells]


def is_stale(md: Path) -> str | None:
    """Why ``md``'s record is stale, or ``None`` if it is current."""
    rec = record_of(md)
    if not rec.exists():
        return "no executed .ipynb"
    want, have = _cells(jupytext.read(md)), _cells(nbformat.read(rec, as_version=4))
    if len(want) != len(have):
        return f"{len(want)} cells in the .md, {len(have)} in the .ipynb"
    for i, (a, b) in enumerate(zip(want, have)):
        if a != b:
            return f"cell {i} ({a[0]}) differs"
    nb = nbformat.read(rec, as_version=4)
    unexecuted = [i for i, c in enumerate(nb.cells)
                  if c.cell_type == "code" and c.source.strip() and c.execution_count is None]
    if unexecuted:
        return f"code cells {unexecuted[:5]} were never executed"
    return _stale_inputs(rec)


def _stale_inputs(rec: Path) -> str | None:
    """A record that reads other chapters' results (the lecture audit) glues the fingerprint
    of what it read as ``audit_inputs``; it is stale when those results have changed since."""
    from nfcourse.audit import inputs_fingerprint, read_glue

    recorded = read_glue(rec).get("audit_inputs")
    if recorded is None:
        return None
    current = inputs_fingerprint(CHAPTERS)
    if recorded != current:
        return (f"the chapter results it reads have changed (fingerprint {recorded} in the "
                f"record, {current} now)")
    return None


def execute(md: Path) -> float:
    """Execute ``md`` top to bottom (stops at the first error) and write its ``.ipynb``."""
    nb = jupytext.read(md)
    nb.metadata.pop("jupytext", None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python",
                                 "name": "python3"}
    start = time.perf_counter()
    NotebookClient(nb, timeout=TIMEOUT_PER_CELL_S, kernel_name="python3",
                   resources={"metadata": {"path": str(md.parent)}}).execute()
    seconds = time.perf_counter() - start
    # No stored widget state: with it the page would load the widget manager from a CDN, and
    # the book must work offline. Widgets are live in a kernel; pages show static figures.
    nb.metadata.pop("widgets", None)
    nb.metadata["nfcourse"] = {"execution_seconds": round(seconds, 1)}
    nbformat.validate(nb)
    nbformat.write(nb, record_of(md))
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["check", "stale", "execute"])
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args(argv)
    chosen = [f.resolve() for f in args.files] or sources()
    if args.command == "execute":
        for md in chosen:
            print(f"executing {md.relative_to(ROOT)} ...", flush=True)
            print(f"  done in {execute(md):.1f} s -> {record_of(md).relative_to(ROOT)}",
                  flush=True)
        return 0
    problems = {md: why for md in chosen if (why := is_stale(md))}
    if args.command == "stale":
        for md in problems:
            print(md.relative_to(ROOT))
        return 0
    orphans = [p for p in CHAPTERS.glob("*.ipynb") if not p.with_suffix(".md").exists()]
    for md, why in problems.items():
        print(f"STALE {md.relative_to(ROOT)}: {why}. Run: make execute "
              f"CHAPTERS={md.relative_to(ROOT)}")
    for p in orphans:
        print(f"ORPHAN {p.relative_to(ROOT)}: no .md source; delete it or restore the source.")
    if problems or orphans:
        return 1
    print(f"{len(chosen)} chapter record(s) match their sources.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
