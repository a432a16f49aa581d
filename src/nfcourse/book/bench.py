"""Fair timing of competing implementations: alternate them, pair the rounds, report medians.

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

import importlib.metadata
import importlib.util
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

__all__ = ["Timing", "Ratio", "alternate", "ratio", "quartiles", "machine_info",
           "load_average", "versions", "PEERS", "require_peers"]

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
    """

    name: str
    per_call: tuple[float, ...]
    units: int = 1

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

    def __str__(self) -> str:
        return (f"time {self.numerator} / time {self.denominator}: {self.median:.2f} "
                f"(IQR {self.q25:.2f}-{self.q75:.2f}, {len(self.per_round)} rounds)")


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
        clock: the clock, seconds as a float (replaceable in tests).
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
    for r in range(warmup + rounds):
        start_at = r % len(names)
        for name in names[start_at:] + names[:start_at]:
            fn = candidates[name]
            if reduce == "mean":
                t0 = clock()
                for _ in range(repeat):
                    fn()
                if sync is not None:
                    sync()
                elapsed = (clock() - t0) / repeat
            else:
                elapsed = math.inf
                for _ in range(repeat):
                    t0 = clock()
                    fn()
                    if sync is not None:
                        sync()
                    elapsed = min(elapsed, clock() - t0)
            if r >= warmup:
                times[name].append(elapsed)
                if after is not None:
                    after(name, r - warmup)
    return {n: Timing(n, tuple(times[n]), unit_of[n]) for n in names}


def ratio(timings: Mapping[str, Timing], numerator: str, denominator: str) -> Ratio:
    """Per-round ratios ``time(numerator) / time(denominator)`` of two timed candidates."""
    a, b = timings[numerator], timings[denominator]
    if len(a.per_call) != len(b.per_call):
        raise ValueError(f"ratio: {numerator} and {denominator} have different numbers of "
                         "rounds; time them together with alternate().")
    pairs = list(zip(a.per_call, b.per_call))
    if not all(math.isfinite(ta) and math.isfinite(tb) and ta > 0 and tb > 0
               for ta, tb in pairs):
        raise ValueError("ratio: a timing was zero or not finite.")
    per_round = tuple((ta / a.units) / (tb / b.units) for ta, tb in pairs)
    return Ratio(numerator, denominator, per_round)


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
