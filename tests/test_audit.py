"""The lecture audit reads glued values from executed records; these tests build tiny records."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from myst_nb.ext.glue import glue  # noqa: F401  (the real glue must exist: its format is read)

from nfcourse import audit

ROOT = Path(__file__).resolve().parent.parent


def _record(path: Path, values: dict[str, object]) -> Path:
    """An executed-looking notebook whose outputs are what ``glue(name, v, display=False)``
    stores."""
    outputs = [nbformat.v4.new_output(
        "display_data", data={"application/papermill.record/text/plain": repr(v)},
        metadata={"scrapbook": {"name": k, "mime_prefix": "application/papermill.record/"}})
        for k, v in values.items()]
    cell = nbformat.v4.new_code_cell("glue(...)", outputs=outputs, execution_count=1)
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), path)
    return path


def test_read_glue_parses_numbers_and_text(tmp_path):
    rec = _record(tmp_path / "x.ipynb", {"a": 1.25, "n": 3, "s": "hello"})
    assert audit.read_glue(rec) == {"a": 1.25, "n": 3, "s": "hello"}


def test_read_glue_matches_what_myst_nb_writes():
    # A real record of this repository: chapter 2 glues the entropy of the moons.
    values = audit.read_glue(ROOT / "chapters" / "02-coupling-flows.ipynb")
    assert abs(values["H"] - 1.0076) < 1e-3


def test_missing_and_corrupt_records_raise_with_the_fix(tmp_path):
    with pytest.raises(audit.AuditError, match="make execute"):
        audit.read_glue(tmp_path / "absent.ipynb")
    (tmp_path / "bad.ipynb").write_text("{not json")
    with pytest.raises(audit.AuditError, match="not a readable notebook"):
        audit.read_glue(tmp_path / "bad.ipynb")


def test_a_missing_key_names_the_chapter_and_the_key(tmp_path):
    _record(tmp_path / "02-coupling-flows.ipynb", {"H": 1.0})
    records = audit.Records(tmp_path)
    with pytest.raises(audit.AuditError, match="02-coupling-flows.*'real_nll'"):
        records.get("02-coupling-flows", "real_nll")


def test_a_claim_without_its_chapter_is_not_checked_never_guessed(tmp_path):
    rows = audit.audit(tmp_path)
    assert rows and all(f.verdict == "not checked" for c, f in rows if c.chapters)


def test_the_table_follows_the_records(tmp_path):
    """Change a chapter's result: the audit's measured figure and verdict change with it."""
    claim = next(c for c in audit.CLAIMS if c.number == 9)
    _record(tmp_path / "07-jko.ipynb", {"lecture_jko_mean": 1 / 1.1})
    assert claim.find(audit.Records(tmp_path)).verdict == "confirmed"
    _record(tmp_path / "07-jko.ipynb", {"lecture_jko_mean": 0.9})
    finding = claim.find(audit.Records(tmp_path))
    assert finding.verdict == "refuted" and "0.9000" in finding.measured


def test_fingerprint_changes_when_any_input_changes(tmp_path):
    _record(tmp_path / "07-jko.ipynb", {"lecture_jko_mean": 1 / 1.1})
    before = audit.inputs_fingerprint(tmp_path)
    assert audit.inputs_fingerprint(tmp_path) == before
    _record(tmp_path / "07-jko.ipynb", {"lecture_jko_mean": 0.9})
    assert audit.inputs_fingerprint(tmp_path) != before


def test_markdown_table_has_one_row_per_claim():
    rows = [(c, audit.Finding("m|x", "confirmed")) for c in audit.CLAIMS]
    table = audit.audit_markdown(rows).splitlines()
    assert len(table) == 2 + len(audit.CLAIMS)
    assert "m\\|x" in table[2]   # a '|' inside a cell cannot break the table


def test_the_records_tool_reports_an_audit_whose_inputs_changed(tmp_path, monkeypatch):
    """`tools/notebooks.py check` (the first step of `make test`) flags the audit record."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import notebooks
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(notebooks, "CHAPTERS", tmp_path)
    _record(tmp_path / "07-jko.ipynb", {"lecture_jko_mean": 1 / 1.1})
    audit_rec = _record(tmp_path / "09-audit.ipynb",
                        {"audit_inputs": audit.inputs_fingerprint(tmp_path)})
    assert notebooks._stale_inputs(audit_rec) is None
    _record(tmp_path / "07-jko.ipynb", {"lecture_jko_mean": 0.9})
    assert "have changed" in notebooks._stale_inputs(audit_rec)
