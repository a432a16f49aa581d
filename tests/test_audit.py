"""The lecture audit reads glued values from executed records; these tests build tiny records."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import nbformat
import pytest
from myst_nb.ext.glue import glue  # noqa: F401  (the real glue must exist: its format is read)

from nfcourse.book import audit

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
    claim = audit.claim(9)
    _record(tmp_path / "07-jko.ipynb", {"lecture_jko_mean": 1 / 1.1, "lecture_euler_mean": 0.9})
    assert claim.find(audit.Records(tmp_path)).verdict == "correct to one digit"
    _record(tmp_path / "07-jko.ipynb", {"lecture_jko_mean": 1.0, "lecture_euler_mean": 0.9})
    finding = claim.find(audit.Records(tmp_path))
    assert finding.verdict == "refuted" and "1.0000" in finding.measured


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


# ---------------------------------------------------------------------------------------------
# Mutation tests: no verdict is a constant. For every claim, tiny records with evidence like the
# book's give a verdict; changing the evidence, and separately the lecture's stated number,
# flips it.

#: Evidence for each claim, per chapter record, close to what the book measures.
EVIDENCE: dict[int, dict[str, dict[str, object]]] = {
    1: {audit.CH2: {"H": 1.0076, "real_nll": 1.0153, "protocol_test": 1.1423,
                    "lecture_floor": 1.6266, "train_se": 0.0237}},
    2: {audit.CH8: {"true_loglik": -1.0076, "flow_loglik": -1.0153, "flow_loglik_se": 0.005,
                    "vae_elbo": -1.2369, "vae_elbo_se": 0.02, "vae_iwae_max": -1.1597,
                    "vae_kmax": 1000, "flow_minus_elbo": 0.242, "flow_minus_elbo_se": 0.004,
                    "vae_n_test": 2000}},
    3: {audit.CH8: {"ood_accuracy": 0.9623, "ood_accuracy_lo": 0.9587,
                    "ood_accuracy_hi": 0.966, "ood_auroc": 0.993, "ood_small_acc": 0.8333,
                    "ood_big_acc": 0.966, "ood_n_in": 5000, "ood_n_out": 5000}},
    4: {audit.CH2: {"ms_per_100": 2.47}, audit.CH3: {"glow2d_ms": 5.79},
        audit.CH4: {"speed_d5_ms": 26.3}},
    5: {audit.CH3: {"claim5_flops": 614656, "claim5_ratio": 57831.0, "claim5_dense_ms": 141.9,
                    "claim5_coupling_us": 2.45}},
    6: {audit.CH4: {"hut_trace": -1.5083, "hut_rademacher_mean": -1.5063,
                    "hut_rademacher_se": 0.0055, "lec_mean": 0.003, "lin_trA": 0.3,
                    "probe_exact_flops_ratio_128": 128.0, "probe_vjp_flops_ratio": 1.0,
                    "probe_vjp_time_min": 0.57, "probe_vjp_time_max": 0.67}},
    7: {audit.CH4: {"adj_adjoint_first": 1.18, "adj_adjoint_last": 1.18,
                    "adj_direct_first": 18.3, "adj_direct_last": 146.0,
                    "adj_time_ratio_min": 1.43, "adj_time_ratio_max": 1.51,
                    "adj_nfe_ratio": 2.0, "adj_grad_diff_rk4": 0.058,
                    "adj_grad_diff_rk16": 2.5e-4}},
    8: {audit.CH6: {"cond_err": 5e-16, "marg_err_10": 0.048, "marg_err_100": 0.0055,
                    "w2_noise_sd": 0.0052, "otcfm_w2_16": 0.1219, "otcfm_euler_w2_nfe32": 0.1219,
                    "otcfm_w2_100": 0.1233, "icfm_w2_16": 0.1431,
                    "icfm_euler_w2_nfe32": 0.1299, "icfm_w2_100": 0.1120}},
    9: {audit.CH7: {"lecture_jko_mean": 1 / 1.1, "lecture_euler_mean": 0.9}},
    10: {audit.CH6: {"order_1rf": 1.01, "order_2rf": 0.95, "order_3rf": 0.91,
                     "err1_1rf": 1.04, "err1_3rf": 0.03}},
    11: {audit.CH2: {"depth_kl_2": 0.458, "depth_kl_4": 0.185, "depth_kl_8": 0.037,
                     "depth_kl_16": 0.017}},
}

#: The verdict on EVIDENCE with the lecture's numbers (as on the book's real records).
BASELINE = {1: "refuted", 2: "refuted", 3: "holds only if", 4: "holds only if",
            5: "holds only if", 6: "holds only if", 7: "confirmed", 8: "holds only if",
            9: "correct to one digit", 10: "refuted", 11: "holds only if"}

#: (what changes, changed evidence values, changed stated numbers, the verdict then).
Mutation = tuple[str, dict[str, float], dict[str, float], str]
MUTATIONS: dict[int, list[Mutation]] = {
    1: [("evidence", {"protocol_test": 1.24}, {}, "confirmed"),
        ("stated", {}, {"nll": 1.14}, "confirmed"),
        ("stated", {"protocol_test": 1.24}, {"entropy": 2.0}, "refuted")],
    2: [("evidence", {"true_loglik": 3.0, "flow_loglik": 2.35, "vae_elbo": 1.89}, {},
         "confirmed"),
        ("stated", {}, {"flow": -1.02, "vae": -1.24}, "confirmed"),
        ("stated", {}, {"flow": -1.02, "vae": -1.10}, "refuted")],
    3: [("evidence", {"ood_small_acc": 0.955}, {}, "confirmed"),
        ("evidence", {"ood_accuracy": 0.8, "ood_accuracy_lo": 0.79, "ood_accuracy_hi": 0.81,
                      "ood_big_acc": 0.85}, {}, "refuted"),
        ("stated", {}, {"acc_lo": 0.80}, "confirmed"),
        ("stated", {}, {"acc_lo": 0.99, "acc_hi": 0.999}, "refuted"),
        # every box inside, but the range starts above the 5% threshold's ceiling of 97.5%
        ("stated", {"ood_small_acc": 0.986, "ood_accuracy_lo": 0.98, "ood_accuracy_hi": 0.99,
                    "ood_big_acc": 0.99}, {"acc_lo": 0.985, "acc_hi": 0.99}, "refuted")],
    # timings depend on the machine: the records' are within 2x of the lecture's, and a
    # faster machine (this morning's, 1.08 / 3.04 / 21.96 ms) makes them upper bounds only
    # RealNVP at 2.47 ms is just over 2x faster than the stated 5 ms: not "about" it
    4: [("evidence", {"ms_per_100": 3.0}, {}, "confirmed"),
        ("evidence", {"ms_per_100": 1.08, "glow2d_ms": 3.04, "speed_d5_ms": 21.96}, {},
         "holds only if"),
        ("evidence", {"glow2d_ms": 30.0}, {}, "refuted"),       # Glow slower than FFJORD
        ("stated", {}, {"RealNVP": 8, "Glow": 12, "FFJORD": 60}, "holds only if"),
        ("stated", {}, {"Glow": 60}, "refuted")],       # the stated ordering breaks
    5: [("evidence", {"claim5_ratio": 600000.0}, {}, "confirmed"),
        ("evidence", {"claim5_flops": 10**8}, {}, "refuted"),
        ("stated", {}, {"ratio": 600}, "refuted"),
        ("stated", {"claim5_ratio": 614656.0}, {"ratio": 600000}, "confirmed")],
    6: [("evidence", {"hut_rademacher_mean": -1.40}, {}, "refuted"),
        ("evidence", {"probe_exact_flops_ratio_128": 64.0}, {}, "refuted"),   # saves D/2 only
        ("evidence", {"probe_vjp_flops_ratio": 3.0}, {}, "refuted"),   # a probe: 3 evaluations
        ("stated", {}, {"bias": 0.1}, "refuted"),
        ("stated", {}, {"saving_power": 2}, "refuted")],                   # "O(D^3) vs O(D)"
    7: [("evidence", {"adj_adjoint_last": 9.4}, {}, "refuted"),
        ("evidence", {"adj_time_ratio_max": 3.2}, {}, "holds only if"),
        ("stated", {}, {"compute": 4}, "refuted"),
        ("stated", {}, {"memory_growth": 8.0}, "refuted")],
    8: [("evidence", {"cond_err": 0.01}, {}, "refuted"),
        ("evidence", {"marg_err_10": 1e-15}, {}, "holds only if"),      # I-CFM needs > 32
        ("evidence", {"marg_err_10": 1e-15, "icfm_euler_w2_nfe32": 0.115}, {}, "confirmed"),
        ("evidence", {"otcfm_euler_w2_nfe32": 0.2, "icfm_euler_w2_nfe32": 0.2}, {}, "refuted"),
        ("stated", {}, {"lo": 1, "hi": 5}, "refuted"),                  # no swept count in 1-5
        ("stated", {"marg_err_100": 1e-13}, {"steps": 100, "hi": 100}, "confirmed")],
    9: [("evidence", {"lecture_jko_mean": 0.96}, {}, "refuted"),
        # no other scheme lands on the stated 0.9: it is the JKO mean rounded, nothing else
        ("evidence", {"lecture_euler_mean": 0.95}, {}, "confirmed"),
        ("stated", {}, {"mean": 0.92}, "refuted"),
        ("stated", {}, {"mean": 0.909}, "confirmed")],
    10: [("evidence", {"order_2rf": 2.1, "order_3rf": 3.8}, {}, "confirmed"),
         ("stated", {}, {"order_per_reflow": 0.5}, "confirmed")],
    11: [("evidence", {"depth_kl_8": 0.2}, {}, "confirmed"),
         ("stated", {}, {"k_min": 4}, "confirmed"),
         ("stated", {"depth_kl_8": 0.2}, {"k_max": 12}, "refuted")],
}


def _write_book(folder: Path, evidence: dict[str, dict[str, object]]) -> Path:
    """One record per chapter, each gluing the given values."""
    folder.mkdir(parents=True, exist_ok=True)
    for chapter, values in evidence.items():
        _record(folder / f"{chapter}.ipynb", values)
    return folder


def _verdict(folder: Path, number: int, evidence_change: dict[str, float] | None = None,
             stated_change: dict[str, float] | None = None) -> audit.Finding:
    """The finding of claim ``number`` on EVIDENCE with some values, and some of the lecture's
    numbers, replaced."""
    change = evidence_change or {}
    evidence = {ch: {k: change.get(k, v) for k, v in values.items()}
                for ch, values in EVIDENCE[number].items()}
    for key, value in change.items():  # a key no baseline has goes to the claim's chapter
        if not any(key in values for values in evidence.values()):
            evidence[next(iter(evidence))][key] = value
    claim = audit.claim(number)
    claim = dataclasses.replace(claim, stated={**claim.stated, **(stated_change or {})})
    return claim.find(audit.Records(_write_book(folder, evidence)))


@pytest.mark.parametrize("number", sorted(MUTATIONS), ids=lambda n: f"claim{n}")
def test_each_verdict_follows_the_evidence_and_the_stated_number(tmp_path, number):
    base = _verdict(tmp_path / "base", number)
    assert base.verdict == BASELINE[number], base.why
    kinds = set()
    for i, (kind, evidence, stated, expected) in enumerate(MUTATIONS[number]):
        finding = _verdict(tmp_path / str(i), number, evidence, stated)
        assert finding.verdict == expected, (kind, evidence, stated, finding.why)
        if expected != base.verdict:
            kinds.add(kind)
    # Both the measurement and the lecture's own number can flip the verdict.
    assert kinds == {"evidence", "stated"}


def test_every_claim_has_evidence_stated_numbers_and_two_reachable_verdicts(tmp_path):
    """A new claim without mutation tests, or whose verdict cannot change, fails here."""
    for claim in audit.CLAIMS:
        assert claim.stated, f"claim {claim.number} carries no stated numbers"
        assert claim.number in MUTATIONS and claim.number in EVIDENCE
        assert set(EVIDENCE[claim.number]) == set(claim.chapters)
        reached = {_verdict(tmp_path / f"{claim.number}-{i}", claim.number, e, s).verdict
                   for i, (_, e, s, _) in enumerate(MUTATIONS[claim.number])}
        reached.add(BASELINE[claim.number])
        assert len(reached) >= 2, f"claim {claim.number} only ever says {reached}"


def test_evidence_matches_the_real_records_verdicts():
    """The fake evidence stands for the book: the real records give the same verdicts."""
    rows = audit.audit(ROOT / "chapters")
    assert {c.number: f.verdict for c, f in rows} == BASELINE


def test_why_texts_quote_the_stated_numbers_not_fixed_ones(tmp_path):
    """Change a stated number: the why-text names the new one (nothing typed in)."""
    assert "0.92" in _verdict(tmp_path / "a", 9, stated_change={"mean": 0.92}).why
    why = _verdict(tmp_path / "b", 2, stated_change={"flow": 3.5, "vae": 1.5}).why
    assert "3.5" in why and "1.5" in why and "2.00" in why   # the stated gap
    assert "fewer than 12" in _verdict(tmp_path / "c", 11, stated_change={"k_min": 12}).why
    assert "7-20" in _verdict(tmp_path / "d", 11, stated_change={"k_min": 7}).why
    assert "97.5%" in _verdict(tmp_path / "e", 3).why           # the protocol's ceiling
    assert "90.0%" in _verdict(tmp_path / "f", 3, stated_change={"percent": 20}).why
    assert "0.242" in _verdict(tmp_path / "g", 2).why             # the paired gap, read
    assert "explicit Euler" in _verdict(tmp_path / "h", 9).why
    assert "at 32 steps" in _verdict(tmp_path / "i", 8).why
    assert "at 16 steps" in _verdict(tmp_path / "j", 8, stated_change={"hi": 20}).why


@pytest.mark.parametrize("stated, half", [(0.9, 0.05), (1.0, 0.05), (1.2341, 0.00005),
                                          (600000, 50000), (2, 0.5), (10, 5), (1e-05, 5e-06)])
def test_rounding_is_half_a_unit_of_the_last_printed_digit(stated, half):
    assert audit.rounding(stated) == pytest.approx(half)


@pytest.mark.parametrize("stated, digits", [(0.9, 1), (1.0, 1), (1.2341, 5), (600000, 1),
                                            (0.909, 3), (2.35, 3)])
def test_significant_digits_read_like_rounding(stated, digits):
    assert audit.significant_digits(stated) == digits


def test_digits_verdicts_are_verdicts_and_nothing_else_is():
    assert audit.digits_verdict(1) == "correct to one digit"
    assert audit.digits_verdict(3) == "correct to three digits"
    assert audit.is_verdict("correct to two digits") and audit.is_verdict("refuted")
    assert not audit.is_verdict("correct to zero digits") and not audit.is_verdict("maybe")
    with pytest.raises(ValueError, match="digits must be"):
        audit.digits_verdict(0)


# ---------------------------------------------------------------------------------------------
# The results snapshot: chapter 9 runs for a reader without the clone's records.


def _fake_book(folder: Path) -> Path:
    """Records of every chapter the claims read, with EVIDENCE for every claim."""
    merged: dict[str, dict[str, object]] = {}
    for evidence in EVIDENCE.values():
        for chapter, values in evidence.items():
            merged.setdefault(chapter, {}).update(values)
    return _write_book(folder, merged)


def test_audit_from_a_snapshot_in_an_empty_folder_matches_the_records(tmp_path, monkeypatch):
    chapters = _fake_book(tmp_path / "book" / "chapters")
    snap = audit.write_snapshot(chapters, tmp_path / "book_results.json")
    empty = tmp_path / "download"
    empty.mkdir()
    monkeypatch.chdir(empty)
    results = audit.load_results(snapshot_path=snap)
    assert "snapshot" in results.source and "records are not here" in results.source
    assert results.fingerprint == audit.inputs_fingerprint(chapters)
    from_snapshot = [f for _, f in audit.audit(results.records)]
    assert from_snapshot == [f for _, f in audit.audit(chapters)]
    assert all(f.verdict != "not checked" for f in from_snapshot)


def test_the_packaged_snapshot_gives_the_books_audit_without_a_clone(tmp_path, monkeypatch):
    """What a reader who downloaded chapter 9 alone sees: the same table as the book."""
    chapters = ROOT / "chapters"
    assert audit.snapshot_problem(chapters) is None
    monkeypatch.chdir(tmp_path)
    results = audit.load_results()
    assert "shipped with nfcourse" in results.source
    assert results.fingerprint == audit.inputs_fingerprint(chapters)
    assert [f for _, f in audit.audit(results.records)] == [f for _, f in audit.audit(chapters)]


def test_the_snapshot_holds_only_what_the_claims_read(tmp_path):
    chapters = _fake_book(tmp_path)
    _record(tmp_path / "07-jko.ipynb", {"lecture_jko_mean": 1 / 1.1, "lecture_euler_mean": 0.9,
                                        "unread": 3.0})
    data = audit.snapshot(chapters)
    assert data["chapters"]["07-jko"] == {"lecture_jko_mean": 1 / 1.1, "lecture_euler_mean": 0.9}
    assert data["inputs"] == audit.inputs_fingerprint(chapters)
    json.dumps(data)  # plain JSON


def test_a_stale_or_missing_snapshot_is_reported_with_the_fix(tmp_path):
    chapters = _fake_book(tmp_path / "chapters")
    snap = tmp_path / "book_results.json"
    assert "missing" in audit.snapshot_problem(chapters, snap)
    audit.write_snapshot(chapters, snap)
    assert audit.snapshot_problem(chapters, snap) is None
    _record(chapters / "07-jko.ipynb", {"lecture_jko_mean": 0.95, "lecture_euler_mean": 0.9})
    problem = audit.snapshot_problem(chapters, snap)
    assert "07-jko:lecture_jko_mean" in problem and audit.SNAPSHOT_COMMAND in problem
    # A glued value no claim reads still changes the inputs fingerprint the page glues.
    audit.write_snapshot(chapters, snap)
    _record(chapters / "07-jko.ipynb", {"lecture_jko_mean": 0.95, "lecture_euler_mean": 0.9,
                                        "unread": 1.0})
    problem = audit.snapshot_problem(chapters, snap)
    assert "fingerprint" in problem and audit.SNAPSHOT_COMMAND in problem
    snap.write_text("{not json")
    assert "not valid JSON" in audit.snapshot_problem(chapters, snap)


def test_results_come_from_the_nearest_folder_of_records(tmp_path, monkeypatch):
    chapters = _fake_book(tmp_path / "chapters")
    (tmp_path / "tools").mkdir()
    for cwd, where in ((tmp_path, "chapters/"), (chapters, "./"),
                       (tmp_path / "tools", "../chapters/")):
        monkeypatch.chdir(cwd)
        results = audit.load_results()
        assert results.source == f"read from the executed records in {where}"
        assert results.fingerprint == audit.inputs_fingerprint(chapters)
