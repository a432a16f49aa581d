"""The alternating timing harness: order, pairing, statistics and the machine record."""

import math

import pytest
import torch

from nfcourse.book.bench import (GROUPS, Ratio, Stopwatch, Timing, alternate, backward_pass,
                                 block_trainer, common_verdict, format_ratios, load_average,
                                 machine_info, median_profiles, median_seconds, op_profile,
                                 quartiles, ratio, ratios_to, versions)


class FakeClock:
    """A clock that only moves when a candidate 'works', by a cost the test chooses."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_quartiles():
    assert quartiles([3.0]) == (3.0, 3.0, 3.0)
    assert quartiles([1, 2, 3, 4, 5]) == (2.0, 3.0, 4.0)
    with pytest.raises(ValueError):
        quartiles([])


def test_alternate_runs_candidates_in_turn_and_rotates_the_first():
    calls: list[str] = []
    alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b"),
               "c": lambda: calls.append("c")}, rounds=3, warmup=1)
    rounds = ["".join(calls[i:i + 3]) for i in range(0, len(calls), 3)]
    assert rounds == ["abc", "bca", "cab", "abc"]  # warm-up round, then 3 timed rounds


def test_alternate_times_each_call_and_divides_by_repeat():
    clock = FakeClock()
    cost = {"fast": 0.001, "slow": 0.003}
    t = alternate({k: (lambda k=k: clock.advance(cost[k])) for k in cost}, rounds=5, repeat=4,
                  warmup=2, units={"fast": 100, "slow": 100}, clock=clock)
    assert list(t) == ["fast", "slow"]
    assert len(t["fast"].per_call) == 5  # warm-up rounds are not kept
    assert t["fast"].median == pytest.approx(0.001)
    assert t["slow"].rate == pytest.approx(100 / 0.003)
    assert "fast" in str(t["fast"]) and "per s" in str(t["fast"])


def test_ratio_pairs_rounds_so_drift_cancels():
    # The machine is ten times slower on every other round; 'slow' always costs 3x 'fast'.
    clock = FakeClock()
    calls = [0]

    def work(base: float) -> None:
        load = 10.0 if (calls[0] // 2) % 2 else 1.0  # two calls per round
        calls[0] += 1
        clock.advance(base * load)

    t = alternate({"fast": lambda: work(1e-3), "slow": lambda: work(3e-3)}, rounds=8,
                  warmup=0, clock=clock)
    spread = max(t["fast"].per_call) / min(t["fast"].per_call)
    assert spread == pytest.approx(10.0)  # absolute times swing tenfold ...
    r = ratio(t, "slow", "fast")
    assert isinstance(r, Ratio)
    assert r.median == pytest.approx(3.0) and r.q25 == pytest.approx(r.q75)  # ... ratios do not
    assert "3.00" in str(r)


def test_reduce_min_keeps_the_uninterrupted_call():
    clock = FakeClock()
    costs = iter([5.0, 1.0, 1.0] * 4)  # the first call of every measurement is interrupted
    mean = alternate({"a": lambda: clock.advance(next(costs))}, rounds=2, repeat=3, warmup=0,
                     clock=clock)
    fastest = alternate({"a": lambda: clock.advance(next(costs))}, rounds=2, repeat=3,
                        warmup=0, reduce="min", clock=clock)
    assert mean["a"].per_call == pytest.approx((7 / 3, 7 / 3))
    assert fastest["a"].per_call == (1.0, 1.0)
    with pytest.raises(ValueError, match="reduce"):
        alternate({"a": lambda: None}, reduce="median")


def test_ratio_uses_units():
    a = Timing("a", (2.0, 2.0), units=2)  # 1 s per unit
    b = Timing("b", (1.0, 1.0), units=1)  # 1 s per unit
    assert ratio({"a": a, "b": b}, "a", "b").median == pytest.approx(1.0)


def test_ratio_refuses_unpaired_or_zero_timings():
    with pytest.raises(ValueError, match="rounds"):
        ratio({"a": Timing("a", (1.0,)), "b": Timing("b", (1.0, 2.0))}, "a", "b")
    with pytest.raises(ValueError, match="zero"):
        ratio({"a": Timing("a", (1.0,)), "b": Timing("b", (0.0,))}, "a", "b")


@pytest.mark.parametrize("kwargs", [{"rounds": 0}, {"repeat": 0}, {"warmup": -1}])
def test_alternate_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        alternate({"a": lambda: None}, **kwargs)
    with pytest.raises(ValueError, match="no candidates"):
        alternate({})


def test_alternate_calls_sync_before_reading_the_clock():
    clock = FakeClock()
    alternate({"a": lambda: None}, rounds=2, warmup=0, sync=lambda: clock.advance(0.5),
              clock=clock)
    assert clock.now == pytest.approx(1.0)


def test_after_runs_untimed_after_each_timed_call():
    clock = FakeClock()
    seen: list[tuple[str, int]] = []

    def after(name: str, r: int) -> None:
        seen.append((name, r))
        clock.advance(100.0)  # slow bookkeeping must not count

    t = alternate({"a": lambda: clock.advance(1.0), "b": lambda: clock.advance(2.0)}, rounds=2,
                  warmup=1, after=after, clock=clock)
    assert seen == [("b", 0), ("a", 0), ("a", 1), ("b", 1)]  # warm-up round unseen
    assert t["a"].per_call == (1.0, 1.0) and t["b"].per_call == (2.0, 2.0)


def test_real_clock_measures_real_work():
    x = torch.randn(64, 64)
    t = alternate({"mm": lambda: x @ x}, rounds=3, repeat=2)
    assert all(s > 0 for s in t["mm"].per_call)


def test_machine_info_names_versions_and_load():
    info = machine_info(["torch", "surely-not-a-package-xyz"])
    assert info["torch"] == torch.__version__ or info["torch"].startswith(torch.__version__[:4])
    assert info["surely-not-a-package-xyz"] == "not installed"
    assert info["torch threads"] == str(torch.get_num_threads())
    assert "load average (1/5/15 min)" in info and info["cpu"]
    assert all(math.isnan(v) or v >= 0 for v in load_average())
    assert versions([]) == {}


def test_the_library_never_imports_the_peer_libraries():
    """The peers (requirements-peers.txt) are for the performance appendix only."""
    import re
    from pathlib import Path

    import nfcourse

    peers = ("zuko", "normflows", "nflows", "torchcfm")
    pattern = re.compile(rf"^\s*(import|from)\s+({'|'.join(peers)})\b", re.M)
    root = Path(nfcourse.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_the_peer_pins_match_requirements_peers():
    from pathlib import Path

    from nfcourse.book.bench import PEERS

    text = (Path(__file__).resolve().parent.parent / "requirements-peers.txt").read_text()
    pins = dict(line.split("==") for line in text.splitlines()
                if line.strip() and not line.startswith("#"))
    assert pins == PEERS


def test_a_missing_peer_names_the_cell_to_run(monkeypatch):
    import importlib.util

    import pytest

    from nfcourse.book import bench

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nflows" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"nflows\..*%pip install --no-deps zuko=="):
        bench.require_peers()


def test_stopwatch_bounds_the_idle_time_by_wall_and_cpu():
    import time

    with Stopwatch() as clock:
        end = time.process_time() + 0.05
        while time.process_time() < end:   # busy: CPU time ~ wall time
            pass
        time.sleep(0.1)                    # idle: wall time only
    assert clock.wall >= 0.15 and 0.04 < clock.cpu < clock.wall
    assert clock.idle_bound == clock.cpu
    assert "wall-clock" in str(clock)
    with pytest.raises(RuntimeError, match="start"):
        Stopwatch().stop()


def test_median_seconds_is_the_median_of_single_calls():
    # One warm-up call, then three timed ones taking 1 s, 5 s and 2 s: the median is 2 s.
    costs = iter([100.0, 1.0, 5.0, 2.0])
    clock = FakeClock()
    assert median_seconds(lambda: clock.advance(next(costs)), repeats=3, clock=clock) == 2.0


def _ratio(*per_round: float) -> Ratio:
    return Ratio("peer", "mine", per_round)


def test_verdicts_only_outside_the_interquartile_range():
    assert _ratio(1.2, 1.3, 1.4, 1.5).verdict == "faster than"
    assert _ratio(0.6, 0.7, 0.8, 0.9).verdict == "slower than"
    assert _ratio(0.8, 0.95, 1.05, 1.3).verdict == "level with"
    faster = {"a": _ratio(1.2, 1.3, 1.4), "b": _ratio(1.5, 1.6, 1.7)}
    assert common_verdict(faster) == "faster than"
    assert common_verdict({**faster, "c": _ratio(0.5, 0.6, 0.7)}) == "mixed against"


def test_ratios_to_a_reference_and_their_table():
    t = {"mine": Timing("mine", (1.0, 2.0)), "peer": Timing("peer", (2.0, 6.0)),
         "other": Timing("other", (1.0, 1.0))}
    r = ratios_to(t, "mine")
    assert list(r) == ["peer", "other"] and r["peer"].per_round == (2.0, 3.0)
    text = format_ratios("title", r)
    assert text.splitlines()[0] == "title" and "mine vs peer" in text and "2.50x" in text


def test_block_trainer_takes_consecutive_steps_across_calls():
    w = torch.nn.Parameter(torch.zeros(()))
    seen = []

    def loss_at(k: int) -> torch.Tensor:
        seen.append(k)
        return (w - 1.0).square()

    run = block_trainer([w], loss_at, lr=0.1, block=3)
    run()
    run()
    assert seen == [0, 1, 2, 3, 4, 5] and 0 < float(w.detach()) < 1   # six Adam steps towards 1
    with pytest.raises(ValueError, match="block"):
        block_trainer([w], loss_at, lr=0.1, block=0)


def test_backward_pass_clears_gradients_first():
    lin = torch.nn.Linear(2, 1)
    x = torch.ones(4, 2)
    run = backward_pass(lin, lambda: lin(x).sum())
    run()
    run()                       # without clearing, the gradient would double
    assert torch.equal(lin.weight.grad, torch.full((1, 2), 4.0))


def test_op_profile_counts_operators_and_flops_exactly():
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    p = op_profile(lambda: a @ b, reps=2)
    assert p.calls >= 1 and p.mflop == pytest.approx(2 * 64 * 32 * 16 / 1e6)
    assert set(p.ms) == set(GROUPS) and p.ms["matrix products"] > 0
    both = median_profiles({"mm": lambda: a @ b, "relu": lambda: torch.relu(a)}, runs=2)
    assert both["mm"].mflop == p.mflop and both["relu"].mflop == 0
    assert both["relu"].ms["activations"] > 0
    for g in GROUPS:                                  # the median lies in the runs' range
        low, high = both["mm"].ms_range[g]
        assert low <= both["mm"].ms[g] <= high
    assert p.ms_range == {}
    with pytest.raises(ValueError, match="runs"):
        median_profiles({"mm": lambda: a @ b}, runs=0)


def test_alternate_records_wall_time_and_load_beside_its_clock():
    from nfcourse.book.bench import alternate, ratio

    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    t = alternate({"a": lambda: setattr(clock, "now", clock.now + 2.0),
                   "b": lambda: setattr(clock, "now", clock.now + 1.0)},
                  rounds=3, warmup=0, clock=clock)
    assert t["a"].per_call == (2.0, 2.0, 2.0)
    assert len(t["a"].wall) == len(t["a"].load) == 3
    assert all(w >= 0 for w in t["a"].wall)
    assert ratio(t, "a", "b").median == 2.0
    assert len(ratio(t, "a", "b", wall=True).per_round) == 3
    with pytest.raises(ValueError, match="none recorded"):
        ratio({"a": Timing("a", (1.0,)), "b": Timing("b", (1.0,))}, "a", "b", wall=True)


def test_over_seeds_needs_three_seeds_and_reports_quartiles():
    from nfcourse.book.bench import over_seeds

    s = over_seeds(lambda seed: float(seed), [0, 1, 2, 3, 4])
    assert (s.q25, s.median, s.q75) == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match=">= 3 seeds"):
        over_seeds(lambda seed: 0.0, [0, 1])


def test_peak_memory_sees_what_is_held_at_once():
    from nfcourse.book.bench import peak_memory

    def two_then_one():
        a = torch.ones(1_000_000)           # 4 MB
        b = torch.ones(500_000)             # 2 MB, both alive: 6 MB
        del a
        c = torch.ones(250_000)             # 3 MB alive at most after a is freed
        return b, c

    assert peak_memory(two_then_one) == pytest.approx(6e6, rel=0.01)

    def chain(n: int):
        def run():
            x = torch.randn(1000, 100, requires_grad=True)
            y = x
            for _ in range(n):
                y = torch.tanh(y)          # each output is kept for the backward pass
            y.sum().backward()
        return run
    # the kept activations grow with the depth: 10 more layers keep ~10 x 400 kB more
    assert peak_memory(chain(20)) - peak_memory(chain(10)) == pytest.approx(4e6, rel=0.1)


def test_time_to_target_times_only_the_steps_and_stops_at_the_target():
    from nfcourse.book.bench import time_to_target

    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    clock, value = Clock(), [1.0]

    def step(k: int) -> None:
        clock.now += 0.5            # a step costs 0.5 s
        value[0] *= 0.9

    def evaluate() -> float:
        clock.now += 100.0          # evaluation is never counted
        return value[0]

    r = time_to_target(step, evaluate, 0.5, max_steps=100, every=5, clock=clock)
    # 0.9^k < 0.5 first at k = 7; evaluated every 5 steps, so it is seen at step 10
    assert r.reached and r.steps == 10 and r.seconds == 5.0
    assert [c[0] for c in r.curve] == [5, 10]
    never = time_to_target(step, lambda: 1.0, 0.5, max_steps=20, every=10, clock=clock)
    assert not never.reached and never.seconds is None and len(never.curve) == 2
    assert r.seconds_or_budget == 5.0 and never.seconds_or_budget == 10.0  # 20 steps of 0.5 s
    with pytest.raises(ValueError, match="every <= max_steps"):
        time_to_target(step, evaluate, 0.5, max_steps=5, every=10)


def test_op_profile_separates_the_optimiser():
    from nfcourse.book.bench import block_trainer

    net = torch.nn.Linear(8, 1)
    x = torch.randn(32, 8)
    step = block_trainer(net.parameters(), lambda k: net(x).square().mean(), lr=1e-3)
    step()
    with_opt = op_profile(step, reps=2)
    without = op_profile(backward_pass(net, lambda: net(x).square().mean()), reps=2)
    assert with_opt.ms["optimiser"] > 0 and without.ms["optimiser"] == 0
    assert all(v >= 0 for v in with_opt.ms.values())


def test_target_verdict_reads_the_whole_iqr():
    from nfcourse.book.bench import target_verdict

    assert target_verdict(1.25, 1.4, 1.2) == "yes"
    assert target_verdict(1.0, 1.1, 1.2) == "no"
    assert target_verdict(1.1, 1.3, 1.2) == "undecided"
    assert target_verdict(0.5, 2.0, None) == "-"
