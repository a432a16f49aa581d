"""The lecture audit (chapter 9): every numeric claim of the lecture, beside the number the book
measured for it.

The measured numbers are never typed in here. Each chapter publishes its results with
``myst_nb.glue``; the glued values are stored in the chapter's executed record
(``chapters/NN-name.ipynb``). :func:`read_glue` reads them back, and each :class:`Claim` turns
the values it needs into a measured figure and a verdict. Re-executing a chapter therefore
changes the audit on the next build, and ``tools/notebooks.py check`` reports the audit's own
record as stale when its inputs changed (see :func:`inputs_fingerprint`).
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

#: The mime-type prefix myst-nb gives a value glued with ``display=False``.
_RECORD_PREFIX = "application/papermill.record/"

Verdict = str  # one of VERDICTS
VERDICTS = ("confirmed", "refuted", "holds only if", "not checked")


class AuditError(RuntimeError):
    """A chapter record the audit needs is missing, unexecuted or lacks a glued value."""


def read_glue(record: Path) -> dict[str, object]:
    """All values glued in an executed record, by name.

    Values are parsed from their ``text/plain`` form (numbers, strings, tuples); anything that
    does not parse as a Python literal is kept as its text.

    Raises:
        AuditError: the file is missing or is not a notebook.
    """
    if not record.exists():
        raise AuditError(f"no executed record {record}: run `make execute CHAPTERS="
                         f"{record.with_suffix('.md')}` first")
    try:
        nb = json.loads(record.read_text(encoding="utf-8"))
        cells = nb["cells"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise AuditError(f"{record} is not a readable notebook ({err}); re-execute its "
                         "chapter with `make execute`") from err
    values: dict[str, object] = {}
    for cell in cells:
        for output in cell.get("outputs", []):
            scrap = output.get("metadata", {}).get("scrapbook")
            if not scrap:
                continue
            data = output.get("data", {})
            text = data.get(_RECORD_PREFIX + "text/plain", data.get("text/plain"))
            if text is None:
                continue
            text = "".join(text) if isinstance(text, list) else str(text)
            try:
                values[scrap["name"]] = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                values[scrap["name"]] = text
    return values


class Records:
    """The glued values of every chapter record in a folder, read lazily."""

    def __init__(self, chapters: Path) -> None:
        self.chapters = Path(chapters)
        self._cache: dict[str, dict[str, object]] = {}

    def has(self, chapter: str) -> bool:
        return (self.chapters / f"{chapter}.ipynb").exists()

    def glue(self, chapter: str) -> dict[str, object]:
        if chapter not in self._cache:
            self._cache[chapter] = read_glue(self.chapters / f"{chapter}.ipynb")
        return self._cache[chapter]

    def get(self, chapter: str, name: str) -> float:
        """One glued number; raises :class:`AuditError` naming the chapter and key if absent."""
        values = self.glue(chapter)
        if name not in values:
            raise AuditError(f"chapter {chapter} glues no value named {name!r}; the audit "
                             f"needs it (glued: {', '.join(sorted(values)) or 'nothing'})")
        value = values[name]
        if not isinstance(value, (int, float)):
            raise AuditError(f"{chapter}:{name} is {value!r}, not a number")
        return float(value)


@dataclass(frozen=True)
class Finding:
    """What the book measured for one claim, and its verdict."""

    measured: str
    verdict: Verdict
    why: str = ""


@dataclass(frozen=True)
class Claim:
    """One numeric claim of the lecture and how the book checks it.

    ``chapters`` are the records the check reads; ``check`` turns their glued values into a
    :class:`Finding`. A claim whose chapters are not in this build is reported as not checked,
    never guessed.
    """

    number: int
    lecture: str
    chapters: tuple[str, ...]
    check: Callable[[Records], Finding]

    def find(self, records: Records) -> Finding:
        missing = [c for c in self.chapters if not records.has(c)]
        if missing:
            return Finding("—", "not checked", f"chapter {', '.join(missing)} is not in this "
                           "build yet")
        finding = self.check(records)
        if finding.verdict not in VERDICTS:
            raise AuditError(f"claim {self.number}: unknown verdict {finding.verdict!r}")
        return finding


# ---------------------------------------------------------------------------------------------
# The claims (numbered as in the lecture digest). Each check only reads glued values.

CH1, CH2, CH3, CH4 = ("01-change-of-variables", "02-coupling-flows", "03-glow",
                      "04-continuous-flows")
CH5, CH6, CH7, CH8 = "05-mnist", "06-flow-matching", "07-jko", "08-applications"


def _claim1(r: Records) -> Finding:
    h, nll = r.get(CH2, "H"), r.get(CH2, "real_nll")
    protocol, floor = r.get(CH2, "protocol_test"), r.get(CH2, "lecture_floor")
    reproduced = abs(protocol - 1.2341) < 0.05 or abs(floor - 1.2341) < 0.05
    return Finding(
        f"entropy H = {h:.4f}; the lecture's protocol reaches {protocol:.4f} on fresh data, "
        f"a longer run {nll:.4f}; the lecture's split cannot go below {floor:.4f}",
        "confirmed" if reproduced else "refuted",
        f"the entropy is right, but 1.2341 is {1.2341 - h:.3f} nats above it and is not "
        "what the recipe reaches with either split; a test NLL below H is a bug, a training "
        "NLL below H is not")


def _claim2(r: Records) -> Finding:
    h = -r.get(CH8, "true_loglik")
    flow, elbo, iwae = (r.get(CH8, k) for k in ("flow_loglik", "vae_elbo", "vae_iwae_max"))
    k = int(r.get(CH8, "vae_kmax"))
    return Finding(
        f"flow {flow:.3f}, VAE ELBO {elbo:.3f}, IWAE_{k} {iwae:.3f} nats per point; "
        f"limit -H = {-h:.3f}",
        "refuted" if max(2.35, 1.89) > -h else "confirmed",
        f"no model's expected log-likelihood exceeds -H = {-h:.3f}, so 2.35 and 1.89 cannot "
        f"be log-likelihoods per point of this data; the measured flow-ELBO gap is "
        f"{flow - elbo:.2f}, not 0.46")


def _claim3(r: Records) -> Finding:
    acc, lo, hi = (r.get(CH8, k) for k in ("ood_accuracy", "ood_accuracy_lo",
                                           "ood_accuracy_hi"))
    small, big = r.get(CH8, "ood_small_acc"), r.get(CH8, "ood_big_acc")
    if small >= 0.95:
        verdict = "confirmed"
    else:
        verdict = "holds only if" if max(acc, big) >= 0.95 else "refuted"
    return Finding(
        f"accuracy {acc:.3f} [{lo:.3f}, {hi:.3f}] for the chapter's box (AUROC "
        f"{r.get(CH8, 'ood_auroc'):.3f}); {small:.3f} for a tighter box, {big:.3f} for a wider "
        "one", verdict,
        "the accuracy depends on how far the uniform outliers spread beyond the data; "
        "95-98% holds for a wide enough box only")


def _claim4(r: Records) -> Finding:
    lecture = {"RealNVP": 5.0, "Glow": 10.0, "FFJORD": 50.0}
    ours = {"RealNVP": r.get(CH2, "ms_per_100"), "Glow": r.get(CH3, "glow2d_ms"),
            "FFJORD": r.get(CH4, "speed_d5_ms")}
    within = all(ours[m] <= lecture[m] for m in ours)
    ordered = ours["RealNVP"] < ours["Glow"] < ours["FFJORD"]
    return Finding(
        "; ".join(f"{m} {ours[m]:.2f} ms" for m in ours) + " per 100 samples (2-D models, "
        "2 CPU threads)", "holds only if" if within else "refuted",
        "as upper bounds on this machine (ours are " + ", ".join(
            f"{lecture[m] / ours[m]:.1f}x" for m in ours) + " faster); the ordering "
        f"RealNVP < Glow < FFJORD {'holds' if ordered else 'does not hold'}; absolute times "
        "depend on machine, batch and model size")


def _claim5(r: Records) -> Finding:
    flops, ratio = r.get(CH3, "claim5_flops"), r.get(CH3, "claim5_ratio")
    return Finding(f"operation counts: D^2 = {flops:,.0f}; measured time ratio {ratio:,.0f} "
                   f"(slogdet {r.get(CH3, 'claim5_dense_ms'):.0f} ms vs a sum of "
                   f"{r.get(CH3, 'claim5_coupling_us'):.1f} µs)",
                   "holds only if",
                   "as a ratio of operation counts (dense determinant O(D^3), coupling "
                   "log-det O(D)); measured wall-clock ratios are an order of magnitude "
                   "smaller (constants, fixed call overheads)")


def _claim6(r: Records) -> Finding:
    trace, mean, se = (r.get(CH4, k) for k in ("hut_trace", "hut_rademacher_mean",
                                               "hut_rademacher_se"))
    return Finding(
        f"tr = {trace:.4f}; Rademacher estimate {mean:.4f} ± {se:.4f}; the lecture's "
        f"e^T f(z) step estimates {r.get(CH4, 'lec_mean'):.4f} for a trace of "
        f"{r.get(CH4, 'lin_trA'):.2f}",
        "confirmed" if abs(mean - trace) < 4 * se else "refuted",
        "the estimator is unbiased and costs one vector-Jacobian product per probe (O(D) "
        "extra, vs O(D^2) for the exact trace); the lecture's code does not implement it")


def _claim7(r: Records) -> Finding:
    first, last = r.get(CH4, "adj_adjoint_first"), r.get(CH4, "adj_adjoint_last")
    lo, hi = r.get(CH4, "adj_time_ratio_min"), r.get(CH4, "adj_time_ratio_max")
    flat = abs(last - first) <= 0.05 * first
    return Finding(
        f"adjoint memory {first:.2f} -> {last:.2f} MiB as the solve lengthens (direct "
        f"backprop {r.get(CH4, 'adj_direct_first'):.1f} -> "
        f"{r.get(CH4, 'adj_direct_last'):.1f} MiB); time {lo:.1f}-{hi:.1f}x, function "
        f"evaluations {r.get(CH4, 'adj_nfe_ratio'):.1f}x",
        "confirmed" if flat and hi <= 2.5 else "holds only if",
        "memory is flat in the number of solver steps; the compute factor is about 2 in "
        "function evaluations, less in wall time")


def _claim8(r: Records) -> Finding:
    c, m10, m100 = (r.get(CH6, k) for k in ("cond_err", "marg_err_10", "marg_err_100"))
    return Finding(f"10 Euler steps: conditional path error {c:.0e}; exact marginal field "
                   f"(noise to 8 Gaussians) RMS error {m10:.3f} (100 steps: {m100:.4f})",
                   "holds only if" if c < 1e-10 < m10 else ("confirmed" if m10 < 1e-10
                                                          else "refuted"),
                   "exact for each pair's straight conditional path; the marginal field a "
                   "sampler follows is curved, so 10 steps are not exact")


def _claim9(r: Records) -> Finding:
    mean = r.get(CH7, "lecture_jko_mean")
    return Finding(f"JKO step: N({mean:.4f}, 1)", "confirmed" if abs(mean - 1 / 1.1) < 1e-6
                   else "refuted", "exactly N(1/1.1, 1); '0.9' is this value rounded")


def _claim10(r: Records) -> Finding:
    orders = [r.get(CH6, f"order_{k}rf") for k in (1, 2, 3)]
    e1, e3 = r.get(CH6, "err1_1rf"), r.get(CH6, "err1_3rf")
    grows = orders[2] > orders[0] + 1.0
    return Finding(f"fitted Euler orders {orders[0]:.2f}, {orders[1]:.2f}, {orders[2]:.2f} "
                   f"after 0, 1, 2 reflows; one-step error {e1:.2f} -> {e3:.3f}",
                   "confirmed" if grows else "refuted",
                   "the order stays about 1; reflow shrinks the constant, not the exponent")


def _claim11(r: Records) -> Finding:
    kl = {k: r.get(CH2, f"depth_kl_{k}") for k in (2, 4, 8, 16)}
    return Finding(", ".join(f"K={k}: KL {v:.3f}" for k, v in kl.items()),
                   "holds only if",
                   "on 2-D moons 8 layers already get within a few hundredths of a nat and 16 "
                   "does better; the count needed grows with the data's dimension and "
                   "complexity")


CLAIMS: tuple[Claim, ...] = (
    Claim(1, "RealNVP on moons: NLL 1.2341 after 500 epochs; entropy about 1.0 nat",
          (CH2,), _claim1),
    Claim(2, "flow log-likelihood on moons ~2.35 vs VAE ELBO ~1.89", (CH8,), _claim2),
    Claim(3, "OOD detection, moons vs uniform noise: 95-98% accuracy (5th-percentile "
          "threshold)", (CH8,), _claim3),
    Claim(4, "RealNVP ~5 ms per 100 samples, Glow ~10 ms, FFJORD ~50 ms", (CH2, CH3, CH4),
          _claim4),
    Claim(5, "coupling log-det is '600,000x' cheaper than a dense determinant at D = 784",
          (CH3,), _claim5),
    Claim(6, "Hutchinson's estimator is unbiased, O(D) per probe instead of O(D^2)", (CH4,),
          _claim6),
    Claim(7, "adjoint method: O(1) memory in depth, about 2x compute", (CH4,), _claim7),
    Claim(8, "flow matching samples in 10-50 steps; on a straight path 10 Euler steps are "
          "exact", (CH6,), _claim8),
    Claim(9, "JKO example: N(1, 1) → N(0.9, 1) for τ = 0.1", (CH7,), _claim9),
    Claim(10, "rectified flow after k reflows: truncation error O(1/N^(2k))", (CH6,), _claim10),
    Claim(11, "K = 10–20 coupling layers suffice", (CH2,), _claim11),
)


def audit(chapters: Path, claims: tuple[Claim, ...] = CLAIMS) -> list[tuple[Claim, Finding]]:
    """Check every claim against the records in ``chapters``."""
    records = Records(chapters)
    return [(claim, claim.find(records)) for claim in sorted(claims, key=lambda c: c.number)]


def _chapter_name(stem: str) -> str:
    """``"02-coupling-flows"`` -> ``"chapter 2 (coupling flows)"``."""
    number, _, name = stem.partition("-")
    return f"chapter {int(number)} ({name.replace('-', ' ')})" if number.isdigit() else stem


def audit_markdown(rows: list[tuple[Claim, Finding]],
                   page_of: Mapping[str, str] | None = None) -> str:
    """The audit as a Markdown table (claim, where checked, measured, verdict, why)."""
    lines = ["| # | the lecture says | checked in | the book measured | verdict | why |",
             "|---|---|---|---|---|---|"]
    for claim, finding in rows:
        where = ", ".join((page_of or {}).get(c, _chapter_name(c)) for c in claim.chapters)
        cells = [str(claim.number), claim.lecture, where, finding.measured,
                 f"**{finding.verdict}**", finding.why]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def inputs_fingerprint(chapters: Path, claims: tuple[Claim, ...] = CLAIMS) -> str:
    """A short hash of every glued value the claims can read; changes when any chapter's
    results change, so a stale audit record is detected without executing anything."""
    digest = hashlib.sha256()
    for chapter in sorted({c for claim in claims for c in claim.chapters}):
        path = Path(chapters) / f"{chapter}.ipynb"
        values = read_glue(path) if path.exists() else None
        digest.update(json.dumps([chapter, values], sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]
