"""The lecture audit (chapter 9): every numeric claim of the lecture, beside the number the book
measured for it.

The measured numbers are never typed in here. Each chapter publishes its results with
``myst_nb.glue``; the glued values are stored in the chapter's executed record
(``chapters/NN-name.ipynb``). :func:`read_glue` reads them back, and each :class:`Claim` turns
the values it needs, together with the numbers the lecture states (``Claim.stated``), into a
measured figure and a verdict. No verdict is a constant: every check derives it by a rule,
written in its docstring, from both the evidence and the stated numbers. Re-executing a
chapter therefore changes the audit on the next build, and ``tools/notebooks.py check``
reports the audit's own record as stale when its inputs changed (see
:func:`inputs_fingerprint`).

A reader who downloads chapter 9 alone has no records. For them the package ships a snapshot
of every value the claims read (``book_results.json``, written by :func:`write_snapshot`);
:func:`load_results` reads the clone's records when they are there and the snapshot otherwise,
and :func:`snapshot_problem` tells the build when the snapshot no longer matches the records.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path

#: The mime-type prefix myst-nb gives a value glued with ``display=False``.
_RECORD_PREFIX = "application/papermill.record/"

Verdict = str  # one of VERDICTS, or digits_verdict(n)
VERDICTS = ("confirmed", "refuted", "holds only if", "not checked")
#: The digits verdict: the stated number is the measured one rounded, yet it *is* another,
#: nearby answer exactly, so it is right only to the digits printed (see :func:`digits_verdict`).
_DIGIT_WORDS = ("one", "two", "three", "four", "five", "six")


def digits_verdict(digits: int) -> Verdict:
    """``"correct to one digit"``, ``"correct to two digits"``, ...: the stated number is the
    measured one rounded to ``digits`` significant digits, and no more."""
    if not 1 <= digits <= len(_DIGIT_WORDS):
        raise ValueError(f"digits_verdict: digits must be 1-{len(_DIGIT_WORDS)}, got {digits}")
    return f"correct to {_DIGIT_WORDS[digits - 1]} digit{'s' if digits > 1 else ''}"


def is_verdict(verdict: str) -> bool:
    """One of :data:`VERDICTS`, or a :func:`digits_verdict`."""
    return verdict in VERDICTS or verdict in {digits_verdict(n)
                                              for n in range(1, len(_DIGIT_WORDS) + 1)}

#: The command that rewrites the packaged snapshot from the clone's records.
SNAPSHOT_COMMAND = "python tools/notebooks.py results"
#: The snapshot's file name inside the ``nfcourse`` package.
SNAPSHOT_NAME = "book_results.json"
#: Where :func:`write_snapshot` puts it in a source tree (the package is installed editable).
SNAPSHOT_PATH = Path(__file__).with_name(SNAPSHOT_NAME)


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


class SnapshotRecords(Records):
    """The same values, read from a snapshot (:func:`snapshot`) instead of a folder of records.

    It holds only what the claims read, so a lookup it lacks raises the same
    :class:`AuditError` as a record without that glued value.
    """

    def __init__(self, values: Mapping[str, Mapping[str, object]]) -> None:
        super().__init__(Path("."))
        self._cache = {chapter: dict(glued) for chapter, glued in values.items()}

    def has(self, chapter: str) -> bool:
        return chapter in self._cache

    def glue(self, chapter: str) -> dict[str, object]:
        if chapter not in self._cache:
            raise AuditError(f"the results snapshot holds nothing from chapter {chapter}; "
                             f"regenerate it with `{SNAPSHOT_COMMAND}`")
        return self._cache[chapter]


class _Tracing(Records):
    """Wraps a source and remembers every (chapter, name) a check reads: the snapshot is
    exactly what the claims need, so it cannot miss a value nor carry dead ones."""

    def __init__(self, inner: Records) -> None:
        super().__init__(inner.chapters)
        self.inner = inner
        self.read: dict[str, dict[str, object]] = {}

    def has(self, chapter: str) -> bool:
        return self.inner.has(chapter)

    def glue(self, chapter: str) -> dict[str, object]:
        return self.inner.glue(chapter)

    def get(self, chapter: str, name: str) -> float:
        value = self.inner.get(chapter, name)
        self.read.setdefault(chapter, {})[name] = self.inner.glue(chapter)[name]
        return value


@dataclass(frozen=True)
class Finding:
    """What the book measured for one claim, and its verdict."""

    measured: str
    verdict: Verdict
    why: str = ""


Check = Callable[[Records, Mapping[str, float]], Finding]


@dataclass(frozen=True)
class Claim:
    """One numeric claim of the lecture and how the book checks it.

    ``stated`` holds the lecture's own numbers, typed as the lecture prints them (their digits
    set the rounding, see :func:`rounding`); ``chapters`` are the records the check reads;
    ``check(records, stated)`` turns the glued values and the stated numbers into a
    :class:`Finding`. A claim whose chapters are not in this build is reported as not checked,
    never guessed.
    """

    number: int
    lecture: str
    chapters: tuple[str, ...]
    check: Check
    stated: Mapping[str, float] = field(default_factory=dict, hash=False)

    def find(self, records: Records) -> Finding:
        missing = [c for c in self.chapters if not records.has(c)]
        if missing:
            return Finding("—", "not checked", f"chapter {', '.join(missing)} is not in this "
                           "build yet")
        finding = self.check(records, self.stated)
        if not is_verdict(finding.verdict):
            raise AuditError(f"claim {self.number}: unknown verdict {finding.verdict!r}")
        return finding


# ---------------------------------------------------------------------------------------------
# Comparing a measured number with a stated one.


def rounding(stated: float) -> float:
    """Half a unit of the last digit the lecture printed: how far a true value can be from a
    number that rounds to ``stated``.

    Floats count their decimals as written (``0.9`` -> 0.05, ``1.2341`` -> 0.00005, ``1.0`` ->
    0.05); whole numbers typed as ints count significant digits, so trailing zeros are
    rounding (``600000`` -> 50,000, ``2`` -> 0.5).
    """
    if isinstance(stated, int) and not isinstance(stated, bool):
        exponent = Decimal(stated).normalize().as_tuple().exponent
    else:
        exponent = Decimal(repr(float(stated))).as_tuple().exponent
    return 0.5 * 10.0 ** int(exponent)


def significant_digits(stated: float) -> int:
    """How many significant digits the lecture printed (``0.9`` -> 1, ``1.2341`` -> 5,
    ``600000`` -> 1), by the same reading as :func:`rounding`."""
    if isinstance(stated, int) and not isinstance(stated, bool):
        return len(Decimal(stated).normalize().as_tuple().digits)
    return len(Decimal(repr(float(stated))).normalize().as_tuple().digits)


def agrees(stated: float, measured: float, noise: float = 0.0) -> bool:
    """Whether ``measured`` could be printed as ``stated``: within its rounding, widened by
    ``noise`` (for a measurement that has a sampling error)."""
    return abs(measured - stated) <= rounding(stated) + noise


def _num(value: float) -> str:
    """A stated number as the lecture prints it (``600000`` -> ``600,000``)."""
    return f"{value:,}"


# ---------------------------------------------------------------------------------------------
# The claims (numbered as in the lecture digest). Each check only reads glued values and the
# lecture's stated numbers; its docstring is the rule that turns them into a verdict.

CH1, CH2, CH3, CH4 = ("01-change-of-variables", "02-coupling-flows", "03-glow",
                      "04-continuous-flows")
CH5, CH6, CH7, CH8 = "05-mnist", "06-flow-matching", "07-jko", "08-applications"

#: Sampling noise allowed on top of rounding, in standard errors (about 95% two-sided).
NOISE_SE = 2.0
#: A bias or difference is zero when it is within this many standard errors of zero (a false
#: alarm rate of 6e-5 per check, so a correct book almost never reports a refutation).
ZERO_SE = 4.0
#: A "~" timing agrees when it is within this factor either way: machines, batch sizes and
#: thread counts move absolute times by about that much.
TIMING_FACTOR = 2.0
#: An adjoint's memory is flat when the longest solve holds within 5% of the shortest; the
#: saved-tensor meter counts bytes, so only bookkeeping that does not scale with L differs.
FLAT_TOL = 0.05
#: "Exact" for a float64 end point of magnitude ~1 after ten steps: a few hundred ulps.
EXACT_TOL = 1e-10
#: A fitted convergence order agrees with a predicted integer order within half an order.
ORDER_TOL = 0.5
#: A depth "suffices" when its KL gap is within this of the deepest model's; chapter 2 uses
#: the same 0.05 nats as its bar for a good 2-D fit.
DEPTH_TOL = 0.05
#: The depths chapter 2's depth study trains.
DEPTHS = (2, 4, 8, 16)


def _claim1(r: Records, s: Mapping[str, float]) -> Finding:
    """Confirmed if the data entropy rounds to the stated entropy and the stated NLL is what
    the lecture's recipe reaches with either split (alternating masks: ``protocol_test``; the
    lecture's own split: its floor ``lecture_floor``), within the stated number's rounding
    plus ``NOISE_SE`` sampling errors of a 1,000-point average; refuted otherwise. A stated
    NLL below the entropy would itself be a bug by the lecture's own rule, so it is refuted."""
    h, nll = r.get(CH2, "H"), r.get(CH2, "real_nll")
    protocol, floor = r.get(CH2, "protocol_test"), r.get(CH2, "lecture_floor")
    noise = NOISE_SE * r.get(CH2, "train_se")
    tol = rounding(s["nll"]) + noise
    entropy_ok = agrees(s["entropy"], h)
    runs = {"alternating masks": protocol, "the lecture's split": floor}
    reached = [name for name, value in runs.items() if agrees(s["nll"], value, noise)]
    below_h = s["nll"] < h - tol
    verdict = "confirmed" if entropy_ok and reached and not below_h else "refuted"
    entropy = (f"the entropy {h:.4f} {'rounds' if entropy_ok else 'does not round'} to the "
               f"stated {_num(s['entropy'])}")
    if below_h:
        nll_text = f"{_num(s['nll'])} is below the entropy, a bug by the lecture's own rule"
    elif reached:
        nll_text = f"{_num(s['nll'])} is reached with {' and '.join(reached)} (± {tol:.3f})"
    else:
        nll_text = (f"{_num(s['nll'])} is {s['nll'] - h:.3f} nats above it and is not what "
                    "the recipe reaches with either split (" + ", ".join(
                        f"{name} {value:.4f}" for name, value in runs.items())
                    + f"; ± {tol:.3f} allowed)")
    return Finding(
        f"entropy H = {h:.4f}; the lecture's protocol reaches {protocol:.4f} on fresh data, "
        f"a longer run {nll:.4f}; the lecture's split cannot go below {floor:.4f}", verdict,
        f"{entropy}; {nll_text}; a test NLL below H is a bug, a training NLL below H is not")


def _claim2(r: Records, s: Mapping[str, float]) -> Finding:
    """Refuted if a stated value exceeds -H beyond its rounding (no model's expected
    log-likelihood per point can: -H is the true density's), or if the flow's or the VAE
    ELBO's measured value is not the stated one within its rounding plus ``NOISE_SE``
    standard errors; confirmed if both agree."""
    bound = r.get(CH8, "true_loglik")
    flow, elbo, iwae = (r.get(CH8, k) for k in ("flow_loglik", "vae_elbo", "vae_iwae_max"))
    k = int(r.get(CH8, "vae_kmax"))
    # The flow's value is its mean over 20,000 fresh points and the ELBO's over the VAE's own
    # test points, each with its own standard error; their gap is read paired instead, both
    # models on the VAE's test points, which removes the two sets' sampling noise.
    noise = {"flow": NOISE_SE * r.get(CH8, "flow_loglik_se"),
             "vae": NOISE_SE * r.get(CH8, "vae_elbo_se")}
    paired, paired_se = r.get(CH8, "flow_minus_elbo"), r.get(CH8, "flow_minus_elbo_se")
    n_paired = int(r.get(CH8, "vae_n_test"))
    measured = {"flow": flow, "vae": elbo}
    impossible = [_num(s[m]) for m in measured if s[m] > bound + rounding(s[m])]
    off = [m for m in measured if not agrees(s[m], measured[m], noise[m])]
    verdict = "refuted" if impossible or off else "confirmed"
    if impossible:
        why = (f"no model's expected log-likelihood exceeds -H = {bound:.3f}, so "
               f"{' and '.join(impossible)} cannot be log-likelihoods per point of this data")
    elif off:
        why = (f"both stated values are possible (below -H = {bound:.3f}) but the measured "
               + ", ".join(f"{m} {measured[m]:.3f} is not {_num(s[m])}" for m in off))
    else:
        why = ("both stated values are what the book measures (± "
               + ", ".join(f"{noise[m]:.3f} for the {m}" for m in measured) + " noise)")
    return Finding(
        f"flow {flow:.3f}, VAE ELBO {elbo:.3f}, IWAE_{k} {iwae:.3f} nats per point; "
        f"limit -H = {bound:.3f}", verdict,
        f"{why}; the flow-ELBO gap, paired on the same {n_paired:,} points, is {paired:.3f} "
        f"± {paired_se:.3f}, the stated one {s['flow'] - s['vae']:.2f}")


def _claim3(r: Records, s: Mapping[str, float]) -> Finding:
    """The stated accuracy range, widened by its rounding, against the accuracy for three
    boxes of uniform outliers (the chapter's by its confidence interval, a tighter and a wider
    one by their values), and against the protocol's ceiling: a threshold at the stated
    validation percentile flags that fraction of normal points whatever the outliers are, so
    on the chapter's mix of normal points and outliers the expected accuracy is at most
    ``1 - percent/100 * n_in / (n_in + n_out)``. Refuted if the whole range lies above the
    ceiling or no box's accuracy is in range; confirmed if every box's is; holds only if some
    are (the claim depends on the box, which the lecture does not give). The why-text says
    when the top of the range is out of the protocol's reach."""
    acc, lo, hi = (r.get(CH8, k) for k in ("ood_accuracy", "ood_accuracy_lo",
                                           "ood_accuracy_hi"))
    small, big = r.get(CH8, "ood_small_acc"), r.get(CH8, "ood_big_acc")
    n_in, n_out = r.get(CH8, "ood_n_in"), r.get(CH8, "ood_n_out")
    ceiling = 1 - s["percent"] / 100 * n_in / (n_in + n_out)
    low = s["acc_lo"] - rounding(s["acc_lo"])
    high = s["acc_hi"] + rounding(s["acc_hi"])
    boxes = {"the tighter box": (small, small), "the chapter's box": (lo, hi),
             "the wider box": (big, big)}
    inside = [b for b, (b_lo, b_hi) in boxes.items() if b_hi >= low and b_lo <= high]
    unreachable = low > ceiling
    verdict = ("refuted" if unreachable or not inside else
               "confirmed" if len(inside) == len(boxes) else "holds only if")
    stated = f"{s['acc_lo']:.0%}-{s['acc_hi']:.0%}"
    if unreachable:
        why = f"all of {stated} is above what the protocol can reach"
    elif verdict == "confirmed":
        why = f"{stated} holds for every box tried"
    elif inside:
        why = (f"{stated} holds for {' and '.join(inside)} only: the accuracy depends on how "
               "far the uniform outliers spread beyond the data")
    else:
        why = f"no box tried gives {stated}"
    mix = "an equal mix" if n_in == n_out else f"{n_in:,.0f} normal points and {n_out:,.0f} outliers"
    limit = (f"a {s['percent']:g}th-percentile threshold flags {s['percent']:g}% of normal "
             f"points, so on {mix} the expected accuracy is at most {ceiling:.1%}, even when "
             "every outlier is caught")
    if s["acc_hi"] > ceiling:
        limit += f": {s['acc_hi']:.0%} is out of reach under the lecture's own protocol"
    return Finding(
        f"accuracy {acc:.3f} [{lo:.3f}, {hi:.3f}] for the chapter's box (AUROC "
        f"{r.get(CH8, 'ood_auroc'):.3f}); {small:.3f} for a tighter box, {big:.3f} for a wider "
        f"one; ceiling {ceiling:.3f}", verdict, f"{why}; {limit}")


def _claim4(r: Records, s: Mapping[str, float]) -> Finding:
    """Confirmed if every measured time is the stated one within ``TIMING_FACTOR``; holds only
    if, instead, every stated time is an upper bound of the measured one and the stated
    ordering of the models holds (true as upper bounds on a machine like this one); refuted
    if a model is slower than stated or the ordering breaks."""
    ours = {"RealNVP": r.get(CH2, "ms_per_100"), "Glow": r.get(CH3, "glow2d_ms"),
            "FFJORD": r.get(CH4, "speed_d5_ms")}
    close = all(1 / TIMING_FACTOR <= ours[m] / s[m] <= TIMING_FACTOR for m in ours)
    bounded = all(ours[m] <= s[m] for m in ours)
    order = sorted(ours, key=lambda m: s[m])
    ordered = all(ours[a] < ours[b] for a, b in zip(order, order[1:]))
    verdict = ("confirmed" if close and ordered else
               "holds only if" if bounded and ordered else "refuted")
    ratios = ", ".join(f"{m} {s[m] / ours[m]:.1f}x" for m in ours)
    return Finding(
        "; ".join(f"{m} {ours[m]:.2f} ms" for m in ours) + " per 100 samples (2-D models, "
        "2 CPU threads)", verdict,
        f"stated over measured: {ratios} ({'all' if close else 'not all'} within "
        f"{TIMING_FACTOR:g}x; {'all' if bounded else 'not all'} upper bounds); the ordering "
        f"{' < '.join(order)} {'holds' if ordered else 'does not hold'}; absolute times "
        "depend on machine, batch and model size")


def _claim5(r: Records, s: Mapping[str, float]) -> Finding:
    """The stated ratio, read to its significant digits, against the operation-count ratio
    (dense determinant O(D^3) over a coupling log-det's O(D): D^2) and the measured wall-clock
    ratio: confirmed if it is both, holds only if it is one of them (true only in that
    sense, which the lecture does not say), refuted if neither."""
    flops, ratio = r.get(CH3, "claim5_flops"), r.get(CH3, "claim5_ratio")
    stated = s["ratio"]
    counts, timed = agrees(stated, flops), agrees(stated, ratio)
    verdict = ("confirmed" if counts and timed else
               "holds only if" if counts or timed else "refuted")
    window = f"{stated - rounding(stated):,.0f}-{stated + rounding(stated):,.0f}"
    return Finding(f"operation counts: D^2 = {flops:,.0f}; measured time ratio {ratio:,.0f} "
                   f"(slogdet {r.get(CH3, 'claim5_dense_ms'):.0f} ms vs a sum of "
                   f"{r.get(CH3, 'claim5_coupling_us'):.1f} µs)", verdict,
                   f"'{_num(stated)}x' means {window}: the ratio of operation counts "
                   f"{'is' if counts else 'is not'} in it, the measured wall-clock ratio "
                   f"({stated / ratio:.1f}x smaller than stated) {'is' if timed else 'is not'}"
                   "; constants and fixed call overheads separate the two")


#: The dimension at which chapter 4 counts what one Hutchinson probe and the exact trace cost.
PROBE_D = 128


def _claim6(r: Records, s: Mapping[str, float]) -> Finding:
    """Two halves. *Unbiased*: the Rademacher estimator's measured bias (mean minus the exact
    trace) equals the stated bias within ``ZERO_SE`` standard errors. *Cost*: "O(D) instead of
    O(D^2)" says a probe saves a factor D^``saving_power`` over the exact trace; chapter 4
    counts the FLOPs at D = ``PROBE_D``: the exact trace in probes (must be that factor within
    0.5) and one probe (a vector-Jacobian product) in field evaluations (must be within a factor
    2 of one). Refuted if either half fails. Otherwise holds only if: the saving is right, but
    a probe costs one evaluation of the field, which is O(D) only for a field whose evaluation
    costs O(D), a condition the lecture does not state (an MLP's cost is mostly its hidden
    layers')."""
    trace, mean, se = (r.get(CH4, k) for k in ("hut_trace", "hut_rademacher_mean",
                                               "hut_rademacher_se"))
    bias = mean - trace
    unbiased = abs(bias - s["bias"]) <= ZERO_SE * se
    saving = r.get(CH4, f"probe_exact_flops_ratio_{PROBE_D}")
    per_probe = r.get(CH4, "probe_vjp_flops_ratio")
    t_lo, t_hi = r.get(CH4, "probe_vjp_time_min"), r.get(CH4, "probe_vjp_time_max")
    predicted = PROBE_D ** s["saving_power"]
    saves = abs(saving - predicted) <= 0.5
    one_eval = 0.5 <= per_probe <= 2.0
    verdict = "holds only if" if unbiased and saves and one_eval else "refuted"
    return Finding(
        f"tr = {trace:.4f}; Rademacher estimate {mean:.4f} ± {se:.4f}; the lecture's "
        f"e^T f(z) step estimates {r.get(CH4, 'lec_mean'):.4f} for a trace of "
        f"{r.get(CH4, 'lin_trA'):.2f}; at D = {PROBE_D}, the exact trace costs {saving:,.0f} "
        f"probes, a probe {per_probe:.2f} field evaluations (FLOPs; {t_lo:.2f}-{t_hi:.2f} in "
        "time)", verdict,
        f"measured bias {bias:+.4f} = {bias / se:+.1f} standard errors from the stated "
        f"{_num(s['bias'])} ({'within' if unbiased else 'beyond'} {ZERO_SE:g}); a probe is one "
        f"vector-Jacobian product, about one field evaluation "
        f"({'' if one_eval else 'not '}so here), instead of the D the exact trace needs "
        f"(a saving of {saving:,.0f} at D = {PROBE_D}, {'' if saves else 'not '}the factor "
        f"{'D' if s['saving_power'] == 1 else 'D^' + _num(s['saving_power'])} the stated costs "
        "imply); 'O(D)' per probe holds only for a field that costs O(D) "
        "to evaluate; the lecture's code does not implement the estimator")


def _claim7(r: Records, s: Mapping[str, float]) -> Finding:
    """Refuted if the adjoint's memory growth from the shortest to the longest solve is not
    the stated growth within ``FLAT_TOL``, or if its ratio of function evaluations to direct
    backpropagation is not the stated compute factor within its rounding; holds only if both
    agree but the wall-time ratio exceeds the stated factor (true in function evaluations,
    not in time on this machine); confirmed otherwise."""
    first, last = r.get(CH4, "adj_adjoint_first"), r.get(CH4, "adj_adjoint_last")
    lo, hi = r.get(CH4, "adj_time_ratio_min"), r.get(CH4, "adj_time_ratio_max")
    nfe = r.get(CH4, "adj_nfe_ratio")
    growth = last / first
    flat = abs(growth - s["memory_growth"]) <= FLAT_TOL * s["memory_growth"]
    evals = agrees(s["compute"], nfe)
    in_time = hi <= s["compute"] + rounding(s["compute"])
    verdict = ("refuted" if not (flat and evals) else
               "confirmed" if in_time else "holds only if")
    return Finding(
        f"adjoint memory {first:.2f} -> {last:.2f} MiB as the solve lengthens (direct "
        f"backprop {r.get(CH4, 'adj_direct_first'):.1f} -> "
        f"{r.get(CH4, 'adj_direct_last'):.1f} MiB); time {lo:.1f}-{hi:.1f}x, function "
        f"evaluations {nfe:.1f}x", verdict,
        f"memory grows {growth:.2f}x over the solve lengths ({'flat' if flat else 'not flat'}"
        f" in the number of solver steps); the compute factor is {nfe:.1f} in function "
        f"evaluations ({'' if evals else 'not '}about {_num(s['compute'])}), {lo:.1f}-"
        f"{hi:.1f} in wall time ({'not ' if in_time else ''}above it); the adjoint's gradient "
        f"is not backprop's: it differs from it by {r.get(CH4, 'adj_grad_diff_rk4'):.1e} "
        f"(relative) at 4 RK4 steps and by {r.get(CH4, 'adj_grad_diff_rk16'):.1e} at 16, since "
        "it belongs to the continuous problem and rebuilds the trajectory backwards")


#: Chapter 6's Euler step sweep: steps -> the glued W2 of each coupling's samples
#: (``{coupling}`` is ``otcfm`` or ``icfm``); 32 steps come from its Euler-vs-Heun sweep, which
#: uses the same noise.
_SWEEP_W2 = {8: "{c}_w2_8", 16: "{c}_w2_16", 32: "{c}_euler_w2_nfe32", 100: "{c}_w2_100"}
_COUPLINGS = {"otcfm": "OT-CFM", "icfm": "I-CFM"}


def _claim8(r: Records, s: Mapping[str, float]) -> Finding:
    """Two halves. *Exact*: at the stated number of Euler steps, the conditional (straight)
    path, and separately the exact marginal field, end within ``EXACT_TOL`` of the true end
    point (the conditional path has a constant velocity, so its error at the chapter's 10
    steps stands for any number). *Enough*: a trained field's samples at the largest swept
    step count within the stated range are as good as at 100 steps (W2 within ``NOISE_SE``
    times the spread of W2 over fresh draws), per coupling. Refuted if the straight path is
    not exact or no coupling's samples are good enough within the range; confirmed if the
    marginal field is exact too and every coupling's samples are; holds only if otherwise (the
    lecture does not say which field it means, and the answer depends on the coupling)."""
    n = int(s["steps"])
    c, m = r.get(CH6, "cond_err"), r.get(CH6, f"marg_err_{n}")
    m100 = r.get(CH6, "marg_err_100")
    cond_exact, marg_exact = c <= EXACT_TOL, m <= EXACT_TOL
    in_range = [k for k in _SWEEP_W2 if s["lo"] <= k <= s["hi"]]
    k = max(in_range) if in_range else None
    noise = NOISE_SE * r.get(CH6, "w2_noise_sd")
    w2 = {name: {j: r.get(CH6, _SWEEP_W2[j].format(c=key)) for j in (16, 100)}
          for key, name in _COUPLINGS.items()}
    enough = {}
    for key, name in _COUPLINGS.items():
        if k is not None:
            w2[name][k] = r.get(CH6, _SWEEP_W2[k].format(c=key))
            enough[name] = abs(w2[name][k] - w2[name][100]) <= noise
        else:
            enough[name] = False
    verdict = ("refuted" if not cond_exact or not any(enough.values()) else
               "confirmed" if marg_exact and all(enough.values()) else "holds only if")
    span = f"{_num(s['lo'])}-{_num(s['hi'])}"
    if k is None:
        steps_text = f"no swept step count lies in {span}"
    else:
        steps_text = (f"at {k} steps (the most in {span} that chapter 6 sweeps) W2 is "
                      + ", ".join(f"{name} {w2[name][k]:.3f} vs {w2[name][100]:.3f} at 100 "
                                  f"({'as good' if enough[name] else 'worse'})"
                                  for name in w2) + f", fresh-draw noise ± {noise:.3f}")
    return Finding(f"{n} Euler steps: conditional path error {c:.0e}; exact marginal field "
                   f"(noise to 8 Gaussians) RMS error {m:.3f} (100 steps: {m100:.4f}); W2 of "
                   "trained fields at 16 / 100 steps: " + ", ".join(
                       f"{name} {v[16]:.3f} / {v[100]:.3f}" for name, v in w2.items()),
                   verdict,
                   f"{n} steps are {'' if cond_exact else 'not '}exact for each pair's "
                   f"straight conditional path and {'' if marg_exact else 'not '}exact for "
                   f"the marginal field a sampler follows (error {m:.1e}, exact means "
                   f"< {EXACT_TOL:.0e})" + ("" if marg_exact else
                                             ": the marginal paths are curved")
                   + f"; {steps_text}" + ("" if all(enough.values()) or k is None else
                                          ": enough steps for a nearly straight field, not "
                                          "for a curved one"))


def _claim9(r: Records, s: Mapping[str, float]) -> Finding:
    """Refuted if the stated mean is not the JKO step's mean rounded (within half a unit of
    its last printed digit). Otherwise the stated number is also compared with the explicit
    Euler step's mean (``lecture_euler_mean``, chapter 7): if it is at least as close to that
    other scheme's answer as to the JKO mean, it is the JKO answer only to the digits printed
    (``digits_verdict``): a reader cannot tell from it which scheme was computed. Confirmed
    if it is closer to the JKO mean."""
    mean, euler = r.get(CH7, "lecture_jko_mean"), r.get(CH7, "lecture_euler_mean")
    stated = s["mean"]
    ok = agrees(stated, mean)
    ambiguous = ok and abs(stated - euler) <= abs(stated - mean)
    digits = significant_digits(stated)
    verdict = digits_verdict(digits) if ambiguous else "confirmed" if ok else "refuted"
    why = (f"the step gives N({mean:.4f}, 1); the stated {_num(stated)} is "
           f"{'' if ok else 'not '}this mean rounded (they differ by "
           f"{abs(mean - stated):.4f}, rounding allows {rounding(stated):g})")
    if ambiguous:
        why += (f", but {_num(stated)} is also the explicit Euler step's mean {euler:.4f} "
                f"({'exactly' if abs(stated - euler) < 1e-12 else 'closer'}): right to "
                f"{_DIGIT_WORDS[digits - 1]} digit{'s' if digits > 1 else ''} only, and "
                "the printed value cannot tell the implicit (JKO) step from the explicit one "
                "(chapter 7)")
    return Finding(f"JKO step: N({mean:.4f}, 1); explicit Euler step: N({euler:.4f}, 1)",
                   verdict, why)


def _claim10(r: Records, s: Mapping[str, float]) -> Finding:
    """The claimed truncation error O(1/N^(c k)) after k reflows predicts an Euler order of
    c k (c = ``stated['order_per_reflow']``). Confirmed if the fitted order after 1 and after
    2 reflows is that prediction within ``ORDER_TOL``; refuted otherwise."""
    orders = [r.get(CH6, f"order_{k}rf") for k in (1, 2, 3)]
    e1, e3 = r.get(CH6, "err1_1rf"), r.get(CH6, "err1_3rf")
    predicted = {k: s["order_per_reflow"] * k for k in (1, 2)}
    ok = all(abs(orders[k] - predicted[k]) <= ORDER_TOL for k in predicted)
    return Finding(f"fitted Euler orders {orders[0]:.2f}, {orders[1]:.2f}, {orders[2]:.2f} "
                   f"after 0, 1, 2 reflows; one-step error {e1:.2f} -> {e3:.3f}",
                   "confirmed" if ok else "refuted",
                   "predicted orders " + ", ".join(f"{p:g}" for p in predicted.values())
                   + " after 1, 2 reflows, fitted " + ", ".join(
                       f"{orders[k]:.2f}" for k in predicted)
                   + (" (within" if ok else " (not within") + f" {ORDER_TOL:g}); reflow "
                   f"shrinks the one-step error {e1 / e3:.0f}x")


def _claim11(r: Records, s: Mapping[str, float]) -> Finding:
    """From chapter 2's depth study (same training budget): the fewest layers whose KL gap is
    within ``DEPTH_TOL`` of the deepest model's. Confirmed if that count is in the stated
    range; holds only if it is below (fewer layers already suffice on this data); refuted if
    it is above (the stated maximum is still far off)."""
    kl = {k: r.get(CH2, f"depth_kl_{k}") for k in DEPTHS}
    deepest = max(kl)
    fewest = min(k for k in kl if kl[k] - kl[deepest] <= DEPTH_TOL)
    k_min, k_max = s["k_min"], s["k_max"]
    if fewest < k_min:
        verdict, tail = "holds only if", (f"fewer than {_num(k_min)} already suffice here; "
                                          "the count needed grows with the data's dimension "
                                          "and complexity")
    elif fewest <= k_max:
        verdict, tail = "confirmed", f"fewer do not, so {_num(k_min)}-{_num(k_max)} is right"
    else:
        verdict, tail = "refuted", f"{_num(k_max)} layers are not enough"
    return Finding(", ".join(f"K={k}: KL {v:.3f}" for k, v in kl.items()), verdict,
                   f"K = {fewest} is the fewest within {DEPTH_TOL:g} nats of K = {deepest} "
                   f"(KL {kl[deepest]:.3f}); {tail}")


CLAIMS: tuple[Claim, ...] = (
    Claim(1, "RealNVP on moons: NLL 1.2341 after 500 epochs; entropy about 1.0 nat",
          (CH2,), _claim1, {"nll": 1.2341, "entropy": 1.0}),
    Claim(2, "flow log-likelihood on moons ~2.35 vs VAE ELBO ~1.89", (CH8,), _claim2,
          {"flow": 2.35, "vae": 1.89}),
    Claim(3, "OOD detection, moons vs uniform noise: 95-98% accuracy (5th-percentile "
          "threshold)", (CH8,), _claim3, {"acc_lo": 0.95, "acc_hi": 0.98, "percent": 5}),
    Claim(4, "RealNVP ~5 ms per 100 samples, Glow ~10 ms, FFJORD ~50 ms", (CH2, CH3, CH4),
          _claim4, {"RealNVP": 5, "Glow": 10, "FFJORD": 50}),
    Claim(5, "coupling log-det is '600,000x' cheaper than a dense determinant at D = 784",
          (CH3,), _claim5, {"ratio": 600000}),
    # "Unbiased" is a bias of 0.
    Claim(6, "Hutchinson's estimator is unbiased, O(D) per probe instead of O(D^2)", (CH4,),
          _claim6, {"bias": 0.0, "saving_power": 1}),
    # "O(1) memory" is a memory growth of 1 from the shortest to the longest solve.
    Claim(7, "adjoint method: O(1) memory in depth, about 2x compute", (CH4,), _claim7,
          {"memory_growth": 1.0, "compute": 2}),
    Claim(8, "flow matching samples in 10-50 steps; on a straight path 10 Euler steps are "
          "exact", (CH6,), _claim8, {"steps": 10, "lo": 10, "hi": 50}),
    Claim(9, "JKO example: N(1, 1) → N(0.9, 1) for τ = 0.1", (CH7,), _claim9, {"mean": 0.9}),
    # O(1/N^(2k)) after k reflows: an Euler order of 2 per reflow.
    Claim(10, "rectified flow after k reflows: truncation error O(1/N^(2k))", (CH6,), _claim10,
          {"order_per_reflow": 2}),
    Claim(11, "K = 10–20 coupling layers suffice", (CH2,), _claim11, {"k_min": 10, "k_max": 20}),
)


def claim(number: int, claims: tuple[Claim, ...] = CLAIMS) -> Claim:
    """The claim with this number (as in the lecture digest)."""
    for c in claims:
        if c.number == number:
            return c
    raise KeyError(f"no claim {number}")


def audit(chapters: Path | Records,
          claims: tuple[Claim, ...] = CLAIMS) -> list[tuple[Claim, Finding]]:
    """Check every claim against the records in ``chapters`` (a folder, or any
    :class:`Records`, such as :attr:`Results.records` from :func:`load_results`)."""
    records = chapters if isinstance(chapters, Records) else Records(chapters)
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


def _input_chapters(claims: tuple[Claim, ...] = CLAIMS) -> list[str]:
    """Every chapter record some claim reads, sorted."""
    return sorted({c for claim in claims for c in claim.chapters})


def inputs_fingerprint(chapters: Path, claims: tuple[Claim, ...] = CLAIMS) -> str:
    """A short hash of every glued value the claims can read; changes when any chapter's
    results change, so a stale audit record is detected without executing anything."""
    digest = hashlib.sha256()
    for chapter in _input_chapters(claims):
        path = Path(chapters) / f"{chapter}.ipynb"
        values = read_glue(path) if path.exists() else None
        digest.update(json.dumps([chapter, values], sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# The results snapshot shipped with the package, for a reader without the clone's records.


def snapshot(chapters: Path, claims: tuple[Claim, ...] = CLAIMS) -> dict[str, object]:
    """Every glued value the claims read, per chapter record, with the records' inputs
    fingerprint (so a standalone chapter 9 glues the same ``audit_inputs``).

    Raises:
        AuditError: a record the claims read is missing, or lacks a value.
    """
    records = Records(chapters)
    missing = [c for c in _input_chapters(claims) if not records.has(c)]
    if missing:
        raise AuditError(f"no executed record for {', '.join(missing)} in {chapters}: a "
                         "snapshot must hold every claim's values")
    tracing = _Tracing(records)
    for c in claims:
        c.check(tracing, c.stated)
    return {
        "about": "Every value the lecture audit (nfcourse.book.audit, chapter 9) reads from the "
                 "book's executed chapter records, for a reader who has only the package. "
                 f"Written by `{SNAPSHOT_COMMAND}`; do not edit.",
        "inputs": inputs_fingerprint(chapters, claims),
        "chapters": {ch: dict(sorted(v.items())) for ch, v in sorted(tracing.read.items())},
    }


def _dumps(data: Mapping[str, object]) -> str:
    """The snapshot's file text: stable order and one value per line, so diffs are readable."""
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def write_snapshot(chapters: Path, path: Path = SNAPSHOT_PATH) -> Path:
    """Write :func:`snapshot` of ``chapters`` to ``path`` (by default the package's file)."""
    path = Path(path)
    path.write_text(_dumps(snapshot(chapters)), encoding="utf-8")
    return path


def _differences(old: Mapping[str, object], new: Mapping[str, object]) -> Iterator[str]:
    """``chapter:name`` for every value that was added, removed or changed."""
    old_ch = old.get("chapters", {}) if isinstance(old.get("chapters"), dict) else {}
    new_ch = new["chapters"]
    for chapter in sorted(set(old_ch) | set(new_ch)):
        a, b = old_ch.get(chapter, {}), new_ch.get(chapter, {})
        for name in sorted(set(a) | set(b)):
            if name not in a or name not in b or a[name] != b[name]:
                yield f"{chapter}:{name}"


def snapshot_problem(chapters: Path, path: Path = SNAPSHOT_PATH) -> str | None:
    """None when the snapshot at ``path`` holds what the records in ``chapters`` give now;
    otherwise what is wrong and the command that fixes it."""
    fix = f"; run `{SNAPSHOT_COMMAND}`"
    try:
        current = snapshot(chapters)
    except AuditError as err:
        return f"cannot check the results snapshot {path}: {err}"
    path = Path(path)
    if not path.exists():
        return f"the results snapshot {path} is missing{fix}"
    try:
        shipped = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        return f"the results snapshot {path} is not valid JSON ({err}){fix}"
    if shipped == json.loads(_dumps(current)):
        return None
    changed = list(_differences(shipped, current))
    if not changed:  # only the fingerprint: a value no claim reads has changed
        return (f"the results snapshot {path} has inputs fingerprint {shipped.get('inputs')}, "
                f"the records {current['inputs']}{fix}")
    shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5
                                      else "")
    return f"the results snapshot {path} is stale ({shown} changed){fix}"


@dataclass(frozen=True)
class Results:
    """Where the audit reads the chapters' results from, and what to tell the reader."""

    records: Records
    source: str        # a sentence for the page: where these numbers come from
    fingerprint: str   # the inputs fingerprint of these results (glued as ``audit_inputs``)


def _has_every_record(folder: Path, claims: tuple[Claim, ...] = CLAIMS) -> bool:
    return all((folder / f"{c}.ipynb").exists() for c in _input_chapters(claims))


def load_snapshot(path: Path | None = None) -> dict[str, object]:
    """The snapshot at ``path``, by default the one shipped with the package.

    Raises:
        AuditError: the file is missing (a package built without it) or unreadable.
    """
    try:
        if path is None:
            text = resources.files("nfcourse.book").joinpath(SNAPSHOT_NAME).read_text(
                encoding="utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        return json.loads(text)
    except (OSError, json.JSONDecodeError) as err:
        raise AuditError(f"cannot read the results snapshot {path or SNAPSHOT_NAME} ({err}); "
                         "run chapter 9 in a clone of the book") from err


def load_results(chapters: Path | None = None, snapshot_path: Path | None = None) -> Results:
    """The chapters' results: from executed records when a folder has every one the claims
    read (``chapters`` if given, else ``.``, ``chapters/``, ``../chapters``), otherwise from
    the snapshot (``snapshot_path``, by default the one shipped with the package), for a
    reader who downloaded chapter 9 alone."""
    folders = [Path(chapters)] if chapters is not None else [
        Path("."), Path("chapters"), Path("..") / "chapters"]
    for folder in folders:
        if _has_every_record(folder):
            return Results(Records(folder), f"read from the executed records in "
                           f"{folder.as_posix().rstrip('/')}/", inputs_fingerprint(folder))
    from nfcourse import __version__

    data = load_snapshot(snapshot_path)
    shipped = (f"shipped with nfcourse {__version__}" if snapshot_path is None
               else f"in {Path(snapshot_path).name}")
    return Results(SnapshotRecords(data["chapters"]),
                   f"read from the results snapshot {shipped} (the clone's records are not "
                   "here)", str(data["inputs"]))
