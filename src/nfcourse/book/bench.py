"""Timing and profiling for the book: one home for every clock the chapters read.

* :class:`Stopwatch` -- wall-clock and CPU time of one block (a training run, a solve).
* :func:`median_seconds` -- the median time of a short call repeated many times
  (:func:`one_thread` with ``clock=time.thread_time`` for a CPU-time reading).
* :func:`alternate` / :func:`ratio` -- fair comparisons of competing implementations.
* :func:`op_profile` / :func:`median_profiles` -- where the time goes, per group of operators.
* :func:`block_trainer`, :func:`backward_pass`, :class:`Contender` -- the pieces the
  performance appendix times; the peer libraries themselves are imported by that page only.
* :func:`over_seeds`, :func:`time_to_target`, :func:`peak_memory` -- quality over several
  seeds, CPU time until a run first meets a target, and the memory a pass holds at once.

Fair timing of competing implementations: alternate them, pair the rounds, report medians.

On a shared machine the speed of the CPU drifts: other processes come and go, the clock
boosts and throttles. Timing ``A`` for a minute and then ``B`` for a minute measures the
drift as much as the code. :func:`alternate` instead runs the candidates in turn, ``A B A B
...`` (the starting candidate rotates every round, so none is always first after a pause),
and keeps every round's time. Two candidates timed in the same round ran under nearly the
same conditions, so the per-round *ratio* of their times cancels most of the drift;
:func:`ratio` summarises those paired ratios by their median and quartiles. Absolute times
still say how loaded the machine was, which :func:`machine_info` records next to them.

Example::

    timings = alternate({"mine": lambda: f(x), "theirs": lambda: g(x)}, rounds=15)
    print(ratio(timings, "theirs", "mine"))   # > 1: "mine" is faster
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from nfcourse.core.validation import validation

__all__ = ["Stopwatch", "median_seconds", "Timing", "Ratio", "alternate", "ratio",
           "ratios_to", "format_ratios", "common_verdict", "quartiles", "machine_info",
           "load_average", "versions", "PEERS", "require_peers", "OpProfile", "op_profile",
           "median_profiles", "Contender", "block_trainer", "backward_pass", "CPU_CLOCK",
           "Spread", "over_seeds", "peak_memory", "glue_summary_row", "target_verdict", "TimeToTarget", "time_to_target"]

#: The peer libraries the performance appendix compares against, with the versions it was
#: measured with (the same pins as requirements-peers.txt; tests/test_bench.py checks).
PEERS: dict[str, str] = {"zuko": "1.6.0", "normflows": "1.7.3", "nflows": "0.14",
                         "torchcfm": "1.0.7"}


def peers_install_line() -> str:
    """The notebook cell that installs the peers without their dependencies (which would
    replace the installed torch)."""
    return "%pip install --no-deps " + " ".join(f"{n}=={v}" for n, v in PEERS.items())


def require_peers() -> None:
    """Fail early, with the cell to run, when a peer library is not installed.

    Raises:
        ModuleNotFoundError: naming the missing libraries and the install line.
    """
    missing = [name for name in PEERS if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(
            f"this page compares nfcourse with peer libraries that are not installed here: "
            f"{', '.join(missing)}. Run this in a cell above, restart the kernel, and run the "
            f"page again: {peers_install_line()}")


def quartiles(values: Iterable[float]) -> tuple[float, float, float]:
    """``(q25, median, q75)`` of ``values`` (linear interpolation; needs at least one value)."""
    v = sorted(float(x) for x in values)
    if not v:
        raise ValueError("quartiles: no values.")
    if len(v) == 1:
        return v[0], v[0], v[0]
    q = statistics.quantiles(v, n=4, method="inclusive")
    return q[0], statistics.median(v), q[2]


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one candidate, one entry per round (``per_call[i]`` is round ``i``).

    ``units`` is how many items one call handles (samples, points, steps), for rates.
    ``per_call`` is read from the clock :func:`alternate` was given (CPU time with
    :data:`CPU_CLOCK`); ``wall`` is the wall-clock time of the same measurements, and ``load``
    the 1-minute load average after each round (both empty when not recorded).
    """

    name: str
    per_call: tuple[float, ...]
    units: int = 1
    wall: tuple[float, ...] = ()
    load: tuple[float, ...] = ()

    @property
    def wall_median(self) -> float:
        return quartiles(self.wall)[1] if self.wall else math.nan

    @property
    def median(self) -> float:
        return quartiles(self.per_call)[1]

    @property
    def iqr(self) -> tuple[float, float]:
        q25, _, q75 = quartiles(self.per_call)
        return q25, q75

    @property
    def rate(self) -> float:
        """Items per second at the median time."""
        return self.units / self.median

    def __str__(self) -> str:
        q25, med, q75 = quartiles(self.per_call)
        return (f"{self.name}: median {_fmt_s(med)} per call (IQR {_fmt_s(q25)}-{_fmt_s(q75)},"
                f" {len(self.per_call)} rounds), {self.rate:,.0f} per s")


@dataclass(frozen=True)
class Ratio:
    """Paired ratios ``time(numerator) / time(denominator)`` over the rounds of :func:`alternate`.

    With times in the ratio, ``median > 1`` means the denominator is faster by that factor.
    """

    numerator: str
    denominator: str
    per_round: tuple[float, ...]

    @property
    def median(self) -> float:
        return quartiles(self.per_round)[1]

    @property
    def q25(self) -> float:
        return quartiles(self.per_round)[0]

    @property
    def q75(self) -> float:
        return quartiles(self.per_round)[2]

    @property
    def verdict(self) -> str:
        """The denominator against the numerator, decided only outside the IQR: "faster than",
        "slower than" or "level with"."""
        return "faster than" if self.q25 > 1 else "slower than" if self.q75 < 1 else "level with"

    def __str__(self) -> str:
        return (f"time {self.numerator} / time {self.denominator}: {self.median:.2f} "
                f"(IQR {self.q25:.2f}-{self.q75:.2f}, {len(self.per_round)} rounds)")


#: The clock the performance appendix times with: CPU time of the calling thread. With one
#: torch thread it counts the work and not the time another process held the core.
CPU_CLOCK: Callable[[], float] = time.thread_time


def _fmt_s(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def alternate(candidates: Mapping[str, Callable[[], object]], *, rounds: int = 11,
              repeat: int = 1, warmup: int = 1, units: int | Mapping[str, int] = 1,
              reduce: str = "mean",
              sync: Callable[[], None] | None = None,
              after: Callable[[str, int], None] | None = None,
              clock: Callable[[], float] = time.perf_counter) -> dict[str, Timing]:
    """Time each candidate once per round, in turn, for ``rounds`` rounds.

    Args:
        candidates: name -> a function of no arguments doing the work once.
        rounds: rounds of timing; each gives one time per candidate.
        repeat: calls per measurement: raise it for work so short that the clock's
            resolution matters, or to filter out interruptions with ``reduce="min"``.
        reduce: ``"mean"``: one clock reading around all ``repeat`` calls, divided by
            ``repeat``; ``"min"``: each call timed alone and the fastest kept, which drops the
            calls that another process interrupted (use it for work that can be repeated).
        warmup: untimed rounds first (allocator, caches, lazy initialisation).
        units: items one call handles (for :attr:`Timing.rate`), one number or one per name.
        sync: called after the timed calls and before reading the clock (e.g.
            ``torch.cuda.synchronize``); ``None`` for CPU work.
        after: ``after(name, round)`` is called, untimed, after each timed measurement (e.g.
            to evaluate a model being trained in timed blocks); ``round`` counts from 0.
        clock: the clock, seconds as a float (replaceable in tests): :data:`CPU_CLOCK` for
            the CPU time of this thread (with one torch thread, the work itself: it does not
            advance while another process has the core), ``time.perf_counter`` for wall time.
            The wall time of every measurement is recorded too (:attr:`Timing.wall`).
    Returns:
        name -> :class:`Timing`, in the order of ``candidates``.
    """
    names = list(candidates)
    if not names:
        raise ValueError("alternate: no candidates to time.")
    if reduce not in ("mean", "min"):
        raise ValueError(f"alternate: reduce must be 'mean' or 'min', got {reduce!r}.")
    if rounds < 1 or repeat < 1 or warmup < 0:
        raise ValueError(f"alternate: need rounds >= 1, repeat >= 1 and warmup >= 0, got "
                         f"rounds={rounds}, repeat={repeat}, warmup={warmup}.")
    unit_of = ({n: int(units) for n in names} if isinstance(units, int)
               else {n: int(units[n]) for n in names})
    times: dict[str, list[float]] = {n: [] for n in names}
    walls: dict[str, list[float]] = {n: [] for n in names}
    loads: list[float] = []
    for r in range(warmup + rounds):
        start_at = r % len(names)
        for name in names[start_at:] + names[:start_at]:
            fn = candidates[name]
            if reduce == "mean":
                w0, t0 = time.perf_counter(), clock()
                for _ in range(repeat):
                    fn()
                if sync is not None:
                    sync()
                elapsed, wall = (clock() - t0) / repeat, (time.perf_counter() - w0) / repeat
            else:
                elapsed = wall = math.inf
                for _ in range(repeat):
                    w0, t0 = time.perf_counter(), clock()
                    fn()
                    if sync is not None:
                        sync()
                    elapsed = min(elapsed, clock() - t0)
                    wall = min(wall, time.perf_counter() - w0)
            if r >= warmup:
                times[name].append(elapsed)
                walls[name].append(wall)
                if after is not None:
                    after(name, r - warmup)
        if r >= warmup:
            loads.append(load_average()[0])
    return {n: Timing(n, tuple(times[n]), unit_of[n], tuple(walls[n]), tuple(loads))
            for n in names}


def ratio(timings: Mapping[str, Timing], numerator: str, denominator: str, *,
          wall: bool = False) -> Ratio:
    """Per-round ratios ``time(numerator) / time(denominator)`` of two timed candidates
    (``wall=True``: of their wall-clock times instead of the clock :func:`alternate` used)."""
    a, b = timings[numerator], timings[denominator]
    ta_all, tb_all = (a.wall, b.wall) if wall else (a.per_call, b.per_call)
    if len(ta_all) != len(tb_all) or not ta_all:
        raise ValueError(f"ratio: {numerator} and {denominator} have different numbers of "
                         "rounds (or none recorded); time them together with alternate().")
    pairs = list(zip(ta_all, tb_all))
    if not all(math.isfinite(ta) and math.isfinite(tb) and ta > 0 and tb > 0
               for ta, tb in pairs):
        raise ValueError("ratio: a timing was zero or not finite.")
    per_round = tuple((ta / a.units) / (tb / b.units) for ta, tb in pairs)
    return Ratio(numerator, denominator, per_round)


def ratios_to(timings: Mapping[str, Timing], reference: str, *, wall: bool = False
              ) -> dict[str, Ratio]:
    """``time(other) / time(reference)`` for every other candidate (above 1: reference faster)."""
    return {name: ratio(timings, name, reference, wall=wall) for name in timings
            if name != reference}


def format_ratios(title: str, ratios: Mapping[str, Ratio]) -> str:
    """``title`` and one line per ratio: its median and interquartile range."""
    lines = [title] + [f"   {r.denominator} vs {name:10s} {r.median:5.2f}x  "
                       f"(IQR {r.q25:.2f}-{r.q75:.2f})" for name, r in ratios.items()]
    return "\n".join(lines)


def common_verdict(ratios: Mapping[str, Ratio]) -> str:
    """The :attr:`Ratio.verdict` shared by all ``ratios``, or "mixed against"."""
    verdicts = {r.verdict for r in ratios.values()}
    return verdicts.pop() if len(verdicts) == 1 else "mixed against"


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1,
                   clock: Callable[[], float] = time.perf_counter) -> float:
    """Median wall-clock seconds of ``repeats`` calls of ``fn``, each timed alone, after
    ``warmup`` untimed calls; for calls short enough that one reading would be noise."""
    return alternate({"fn": fn}, rounds=repeats, warmup=warmup, clock=clock)["fn"].median


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one torch thread (restored after), so that a CPU-time clock such as
    ``time.thread_time`` measures the work itself: on one thread it does not count other
    threads' time and does not advance while the process waits for the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15-minute load averages (``(nan, nan, nan)`` where the OS has none)."""
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover - not on Linux/macOS
        return math.nan, math.nan, math.nan


def versions(packages: Iterable[str]) -> dict[str, str]:
    """Installed version of each distribution, or ``"not installed"``."""
    out = {}
    for p in packages:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(packages: Iterable[str] = ()) -> dict[str, str]:
    """What a timing depends on: CPU, cores, torch threads, load, Python/torch/package versions."""
    one, five, fifteen = load_average()
    info = {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "load average (1/5/15 min)": f"{one:.2f} / {five:.2f} / {fifteen:.2f}",
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    info.update(versions(packages))
    return info


class Stopwatch:
    """Context manager: wall-clock and CPU time of a block, and the machine's load around it.

    On a machine shared with other jobs the wall-clock time of a computation grows with the
    competition; its CPU time (all threads of this process) hardly does. For a compute-bound
    block at least one thread is always working, so on an otherwise idle machine its wall-clock
    time would be at most its CPU time; it is also at most the wall-clock time measured here.
    :attr:`idle_bound` is the smaller of the two: an upper bound on the idle wall-clock time,
    whatever else the machine was doing.
    """

    def __init__(self) -> None:
        self.wall = self.cpu = math.nan
        self.load = math.nan

    def start(self) -> Stopwatch:
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()
        return self

    def stop(self) -> Stopwatch:
        if not hasattr(self, "_wall0"):
            raise RuntimeError("Stopwatch.stop: call start() first (or use it in a with block).")
        self.wall = time.perf_counter() - self._wall0
        self.cpu = time.process_time() - self._cpu0
        self.load = load_average()[0]
        return self

    def __enter__(self) -> Stopwatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def idle_bound(self) -> float:
        return min(self.wall, self.cpu)

    def __str__(self) -> str:
        return (f"{self.wall:.0f} s wall-clock, {self.cpu:.0f} s CPU "
                f"(1-minute load average {self.load:.1f} at the end)")


# --------------------------------------------------------------------------- profiles

#: Operator groups of :func:`op_profile`: the networks' matrix products, their activations,
#: the optimiser's update (``Optimizer.step`` and ``zero_grad``, everything they call), and
#: everything else (a coupling's own arithmetic: masks, splits, scales, sums).
MATMUL = frozenset({"aten::mm", "aten::addmm", "aten::bmm"})
ACTIVATION = frozenset({"aten::relu", "aten::clamp_min", "aten::leaky_relu",
                        "aten::relu_", "aten::clamp_min_", "aten::leaky_relu_",  # in place
                        "aten::threshold_backward", "aten::leaky_relu_backward"})
GROUPS = ("matrix products", "activations", "optimiser", "coupling arithmetic")


@dataclass(frozen=True)
class OpProfile:
    """Per call: ``calls`` aten operators, ``mflop`` in matrix products, CPU ``ms`` per group.

    ``ms_range`` is, for a :func:`median_profiles` result, the ``(fastest, slowest)`` run's
    time per group: how far one profile can be off at the machine's load. Empty for a single
    :func:`op_profile`.
    """

    calls: float
    mflop: float
    ms: dict[str, float]
    ms_range: dict[str, tuple[float, float]] = field(default_factory=dict)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence the profiler's own start/stop lines, which it writes straight to file 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def op_profile(fn: Callable[[], object], reps: int = 3) -> OpProfile:
    """Profile ``reps`` calls of ``fn`` with ``torch.profiler`` (CPU); see :class:`OpProfile`.

    The operator count and the FLOP do not depend on the machine's load; the times do. A
    matrix product's time includes what it calls (the copy of the bias into its output); the
    "coupling arithmetic" is all the remaining self time outside activations.
    """
    if reps < 1:
        raise ValueError(f"op_profile: reps must be >= 1, got {reps}.")
    with quiet_stderr(), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(reps):
            fn()
    calls = flops = total = 0.0
    groups: Counter[str] = Counter()
    for e in prof.key_averages():
        if e.key.startswith("Optimizer."):  # step and zero_grad: their children's time too
            groups[GROUPS[2]] += e.cpu_time_total / reps / 1e3
    optimiser_children = _optimiser_self_ms(prof) / reps
    for e in prof.key_averages():
        if not e.key.startswith("aten::"):
            continue
        calls += e.count / reps
        flops += (e.flops or 0) / reps
        total += e.self_cpu_time_total / reps / 1e3
        if e.key in MATMUL:
            groups[GROUPS[0]] += e.cpu_time_total / reps / 1e3
        elif e.key in ACTIVATION:
            groups[GROUPS[1]] += e.self_cpu_time_total / reps / 1e3
    # the optimiser's operators are in ``total`` already; what is neither matrix product,
    # activation nor optimiser is the coupling's arithmetic
    groups[GROUPS[3]] = total - optimiser_children - groups[GROUPS[0]] - groups[GROUPS[1]]
    return OpProfile(calls, flops / 1e6, {g: groups[g] for g in GROUPS})


def _optimiser_self_ms(prof: torch.profiler.profile) -> float:
    """Self time (ms, all reps) of the aten operators that run inside ``Optimizer.*`` events."""
    inside = 0.0
    for e in prof.events():
        parent, under = e.cpu_parent, False
        while parent is not None:
            if parent.name.startswith("Optimizer."):
                under = True
                break
            parent = parent.cpu_parent
        if under and e.name.startswith("aten::"):
            inside += e.self_cpu_time_total / 1e3
    return inside


def median_profiles(candidates: Mapping[str, Callable[[], object]], runs: int, reps: int = 2
                    ) -> dict[str, OpProfile]:
    """:func:`op_profile` of each candidate ``runs`` times, in turn; the median time per group
    and, in ``ms_range``, the fastest and slowest run's.

    Counts and FLOP are those of the first run (they are the same in every run).
    """
    if runs < 1:
        raise ValueError(f"median_profiles: runs must be >= 1, got {runs}.")
    results: dict[str, list[OpProfile]] = {name: [] for name in candidates}
    for _ in range(runs):
        for name, fn in candidates.items():
            results[name].append(op_profile(fn, reps))
    return {name: OpProfile(ps[0].calls, ps[0].mflop,
                            {g: quartiles(p.ms[g] for p in ps)[1] for g in GROUPS},
                            {g: (min(p.ms[g] for p in ps), max(p.ms[g] for p in ps))
                             for g in GROUPS})
            for name, ps in results.items()}


# --------------------------------------------------------------------------- what is timed

@dataclass
class Contender:
    """One library's model behind one small interface: ``log_prob(x)`` and ``sample(n)``."""

    name: str
    module: nn.Module
    log_prob: Callable[[Tensor], Tensor]
    sample: Callable[[int], Tensor]

    def nll(self, x: Tensor) -> Tensor:
        """The mean negative log-likelihood of the batch ``x``: the training loss."""
        return -self.log_prob(x).mean()


def block_trainer(parameters: Iterable[nn.Parameter], loss_at: Callable[[int], Tensor], *,
                  lr: float, block: int = 1, validate: bool = True,
                  foreach: bool | None = None) -> Callable[[], None]:
    """A function that runs the next ``block`` Adam steps each time it is called.

    Step ``k`` (counted over all calls, from 0) minimises ``loss_at(k)``, so candidates timed
    in blocks by :func:`alternate` see the same sequence of batches, one block per round.
    ``validate=False`` computes the losses with the library's input checks switched off
    (:func:`nfcourse.core.validation.validation`), to time what those checks cost.
    ``foreach=True`` updates all parameters with one batched kernel per Adam operation instead
    of a loop over them (the same arithmetic; ``None`` is torch's default, the loop on CPU).
    """
    if block < 1:
        raise ValueError(f"block_trainer: block must be >= 1, got {block}.")
    opt = torch.optim.Adam(parameters, lr=lr, foreach=foreach)
    done = 0

    def run_block() -> None:
        nonlocal done
        for _ in range(block):
            with validation(validate):
                loss = loss_at(done)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
    return run_block


def backward_pass(module: nn.Module, loss: Callable[[], Tensor]) -> Callable[[], None]:
    """A function doing one forward and backward pass of ``loss()`` (no optimiser step), with
    ``module``'s gradients cleared first so that every call does the same work."""
    def run() -> None:
        module.zero_grad(set_to_none=True)
        loss().backward()
    return run


# --------------------------------------------------------------------------- seeds, memory

@dataclass(frozen=True)
class Spread:
    """One quantity measured once per seed: its median and interquartile range over seeds."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return quartiles(self.values)[1]

    @property
    def q25(self) -> float:
        return quartiles(self.values)[0]

    @property
    def q75(self) -> float:
        return quartiles(self.values)[2]

    def __str__(self) -> str:
        return (f"median {self.median:.4g} (IQR {self.q25:.4g}-{self.q75:.4g}, "
                f"{len(self.values)} seeds)")


def over_seeds(measure: Callable[[int], float], seeds: Iterable[int]) -> Spread:
    """``measure(seed)`` for every seed (a quality needs at least 3 to show its spread).

    Raises:
        ValueError: with fewer than 3 seeds.
    """
    seeds = list(seeds)
    if len(seeds) < 3:
        raise ValueError(f"over_seeds: a comparison of quality needs >= 3 seeds, got {seeds}.")
    return Spread(tuple(float(measure(s)) for s in seeds))


def target_verdict(q25: float, q75: float, target: float | None) -> str:
    """"yes" if the whole IQR reaches ``target`` (``q25 >= target``), "no" if none of it does
    (``q75 < target``), "undecided" if it straddles the target, "-" without a target."""
    if target is None:
        return "-"
    return "yes" if q25 >= target else "no" if q75 < target else "undecided"


def glue_summary_row(key: str, against: str, median: float, q25: float, q75: float, n: int,
                     unit: str, target: float | None) -> tuple[float, str]:
    """Glue one row of the performance appendix's summary table (``sum_<key>...``): a speed
    ratio (above 1: nfcourse faster), its IQR, what it was measured over, the target and
    :func:`target_verdict`. Returns ``(median, verdict)``."""
    from myst_nb import glue  # the book's dependency, needed only on its pages

    verdict = target_verdict(q25, q75, target)
    glue(f"sum_{key}_vs", against, display=False)
    glue(f"sum_{key}", float(median), display=False)
    glue(f"sum_{key}_iqr", f"{q25:.2f}-{q75:.2f}", display=False)
    glue(f"sum_{key}_n", f"{n} {unit}", display=False)
    glue(f"sum_{key}_target", "none set" if target is None else f"≥ {target:.2f}",
         display=False)
    glue(f"sum_{key}_met", verdict, display=False)
    return float(median), verdict


def peak_memory(fn: Callable[[], object]) -> float:
    """Peak bytes of CPU tensor memory allocated while ``fn()`` runs, above the level at its
    start (the largest total it held at once, intermediate tensors of the backward pass
    included).

    Read from ``torch.profiler``'s memory records (``profile_memory=True``): every allocation
    and free is an instant event carrying the allocator's running total, exported with the
    trace.
    """
    with quiet_stderr(), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as f:
            events = json.load(f)["traceEvents"]
    totals = [e["args"]["Total Allocated"] - e["args"]["Bytes"] for e in events
              if e.get("name") == "[memory]"][:1]  # the level before the first allocation
    totals += [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return float(max(totals) - totals[0]) if totals else 0.0


@dataclass(frozen=True)
class TimeToTarget:
    """When a training run first met its target: ``steps`` and CPU ``seconds`` of training
    (``None`` if it never did within the budget), and the curve ``(step, seconds, value)``
    of every evaluation."""

    steps: int | None
    seconds: float | None
    curve: tuple[tuple[int, float, float], ...]

    @property
    def reached(self) -> bool:
        return self.steps is not None

    @property
    def seconds_or_budget(self) -> float:
        """``seconds`` if the target was met, else the seconds of the whole run: a lower bound
        on the time it would have needed."""
        if self.seconds is not None:
            return self.seconds
        return self.curve[-1][1] if self.curve else 0.0


def time_to_target(step: Callable[[int], None], evaluate: Callable[[], float], target: float,
                   *, max_steps: int, every: int,
                   clock: Callable[[], float] = time.thread_time) -> TimeToTarget:
    """Run ``step(k)`` for ``k = 0, 1, ...`` until ``evaluate() < target`` or ``max_steps``.

    Only the steps are timed (``clock``, CPU time of this thread by default); ``evaluate`` runs
    untimed after every ``every`` steps, so a finer check costs the result nothing.

    Raises:
        ValueError: unless ``1 <= every <= max_steps``.
    """
    if not 1 <= every <= max_steps:
        raise ValueError(f"time_to_target: need 1 <= every <= max_steps, got every={every}, "
                         f"max_steps={max_steps}.")
    seconds, curve = 0.0, []
    for k in range(max_steps):
        t0 = clock()
        step(k)
        seconds += clock() - t0
        if (k + 1) % every == 0:
            value = float(evaluate())
            curve.append((k + 1, seconds, value))
            if value < target:
                return TimeToTarget(k + 1, seconds, tuple(curve))
    return TimeToTarget(None, None, tuple(curve))
