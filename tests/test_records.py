"""The stale-record check that keeps each chapter's executed .ipynb in step with its .md."""

import importlib.util
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("notebooks", ROOT / "tools" / "notebooks.py")
notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(notebooks)  # type: ignore[union-attr]

SOURCE = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
    format_version: 0.13
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# A chapter

```{code-cell} ipython3
:tags: [nbval-check-output]

print(1 + 1)
```
"""


def _write_record(md: Path) -> None:
    nb = jupytext.read(md)
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = i + 1
    nbformat.write(nb, md.with_suffix(".ipynb"))


def test_matching_record_is_current(tmp_path: Path) -> None:
    md = tmp_path / "01-x.md"
    md.write_text(SOURCE)
    _write_record(md)
    assert notebooks.is_stale(md) is None


def test_edited_code_makes_the_record_stale(tmp_path: Path) -> None:
    md = tmp_path / "01-x.md"
    md.write_text(SOURCE)
    _write_record(md)
    md.write_text(SOURCE.replace("1 + 1", "1 + 2"))
    assert "cell 1" in notebooks.is_stale(md)


def test_changed_tags_and_prose_make_the_record_stale(tmp_path: Path) -> None:
    md = tmp_path / "01-x.md"
    md.write_text(SOURCE)
    _write_record(md)
    md.write_text(SOURCE.replace(":tags: [nbval-check-output]\n", ""))
    assert notebooks.is_stale(md) is not None
    md.write_text(SOURCE.replace("# A chapter", "# Another chapter"))
    assert notebooks.is_stale(md) is not None


def test_missing_or_unexecuted_record_is_stale(tmp_path: Path) -> None:
    md = tmp_path / "01-x.md"
    md.write_text(SOURCE)
    assert notebooks.is_stale(md) == "no executed .ipynb"
    nbformat.write(jupytext.read(md), md.with_suffix(".ipynb"))
    assert "never executed" in notebooks.is_stale(md)

