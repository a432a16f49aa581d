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



DRAWING = SOURCE.replace("print(1 + 1)", "import matplotlib.pyplot as plt\nplt.plot([0, 1])\nplt.show()")
_PNG = "iVBORw0KGgo="  # the content is not inspected, only that an image output is there


def _with_image(md: Path) -> Path:
    _write_record(md)
    rec = md.with_suffix(".ipynb")
    nb = nbformat.read(rec, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": _PNG})]
    nbformat.write(nb, rec)
    return rec


def test_a_drawing_cell_without_its_figure_is_reported(tmp_path: Path) -> None:
    md = tmp_path / "01-x.md"
    md.write_text(DRAWING)
    rec = _with_image(md)
    assert notebooks.missing_figures(rec) == []
    nb = nbformat.read(rec, as_version=4)
    nb.cells[1].outputs = []  # what a kernel started with MPLBACKEND=Agg records
    nbformat.write(nb, rec)
    assert notebooks.missing_figures(rec) == [1]


def test_the_no_figure_tag_exempts_a_cell(tmp_path: Path) -> None:
    md = tmp_path / "01-x.md"
    md.write_text(DRAWING.replace("[nbval-check-output]", "[no-figure]"))
    _write_record(md)
    assert notebooks.missing_figures(md.with_suffix(".ipynb")) == []


def test_a_real_chapter_stripped_of_its_figures_fails_the_check(tmp_path: Path) -> None:
    # A broken copy of chapter 1's record: every image output removed.
    rec = ROOT / "chapters" / "01-change-of-variables.ipynb"
    nb = nbformat.read(rec, as_version=4)
    drawing = [i for i, c in enumerate(nb.cells) if notebooks.draws(c)]
    assert len(drawing) >= 3 and notebooks.missing_figures(rec) == []
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs
                            if not any(k.startswith("image/") for k in o.get("data", {}))]
    broken = tmp_path / rec.name
    nbformat.write(nb, broken)
    assert notebooks.missing_figures(broken) == drawing


def test_every_committed_record_shows_a_figure_for_every_drawing_cell() -> None:
    for md in notebooks.sources():
        assert notebooks.missing_figures(notebooks.record_of(md)) == [], md.name


def test_setup_displays_figures_in_a_kernel_started_with_agg(tmp_path: Path,
                                                             monkeypatch) -> None:
    # The cause of chapter 3's missing figures: MPLBACKEND=Agg inherited by the kernel.
    from nbclient import NotebookClient

    monkeypatch.setenv("MPLBACKEND", "Agg")
    code = ("from nfcourse.book import setup\nsetup(seed=0)\nimport matplotlib.pyplot as plt\n"
            "plt.plot([0, 1])\nplt.show()")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert any("image/png" in o.get("data", {}) for o in nb.cells[0].outputs), nb.cells[0].outputs


def test_the_execution_page_follows_the_records() -> None:
    text = notebooks.report()
    for md in notebooks.sources():
        assert f"chapters/{md.stem}" in text
    assert (ROOT / "execution.md").read_text(encoding="utf-8") == text


def test_the_execution_page_warns_when_a_chapter_is_over_budget(tmp_path: Path,
                                                                monkeypatch) -> None:
    md = tmp_path / "02-coupling-flows.md"
    md.write_text(SOURCE)
    _write_record(md)
    rec = md.with_suffix(".ipynb")
    nb = nbformat.read(rec, as_version=4)
    budget = notebooks.BUDGET_S["02-coupling-flows"]["ci"]
    nb.metadata["nfcourse"] = {"execution_seconds": budget + 1.0, "cpu_seconds": 1.0,
                               "profile": "ci", "device": "cpu", "date": "2026-12-01",
                               "load_average": [8.0, 9.0], "machine": "test"}
    nbformat.write(nb, rec)
    monkeypatch.setattr(notebooks, "CHAPTERS", tmp_path)
    text = notebooks.report()
    assert "(over budget)" in text and "```{warning}" in text
    nb.metadata["nfcourse"]["execution_seconds"] = budget - 1.0
    nbformat.write(nb, rec)
    assert "within its budget" in notebooks.report()
