"""No chapter asserts on wall time: the static check finds such asserts and passes the book."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("timing_asserts", ROOT / "tools" / "timing_asserts.py")
timing = importlib.util.module_from_spec(_spec)
sys.modules["timing_asserts"] = timing  # dataclasses look their module up there
_spec.loader.exec_module(timing)  # type: ignore[union-attr]

BROKEN = {
    "a clock difference": ["import time\nstart = time.perf_counter()\nfit()\n"
                           "took = time.perf_counter() - start", "assert took < 90"],
    "a dict of clock readings": ["seconds = {}\nfor n in names:\n    t0 = time.time()\n"
                                 "    seconds[n] = time.time() - t0",
                                 "assert seconds['RealNVP'] <= profile.pick(ci=90, full=600)"],
    "arithmetic on a timing": ["t = time.process_time()", "per_call = 1e3 * t / 100",
                               "check('time', per_call, below=5.0)"],
    "a chapter helper that reads a clock": [
        "def median_of_calls(f):\n    t = time.perf_counter(); f()\n"
        "    return time.perf_counter() - t", "cost = []\ncost.append(median_of_calls(g))",
        "assert cost[-1] > 5 * cost[0]"],
    "a harness ratio": ["r = ratio(alternate(candidates), 'zuko', 'nfcourse')",
                        "assert r.median >= 0.7"],
    "a name that says so": ["ms_per_100 = sample_speed(model)", "assert ms_per_100 < 5.0"],
}


@pytest.mark.parametrize("name", BROKEN)
def test_a_timing_assert_is_found(name: str) -> None:
    assert timing.offences(BROKEN[name]), name


def test_checks_on_results_are_not_timing_asserts() -> None:
    cells = ["ms_bits, ms_se = evaluate(ms)", "speed[name] = (ms, nfe, error)",
             "check('bits', ms_bits, above=0.97, below=2.4)", "assert speed['rk4'][1] == 32"]
    assert timing.offences(cells) == []


@pytest.mark.parametrize("md", sorted((ROOT / "chapters").glob("*.md")), ids=lambda p: p.stem)
def test_no_chapter_asserts_on_wall_time(md: Path) -> None:
    assert timing.chapter_offences(md) == []


def test_a_real_chapter_with_a_timing_assert_fails(tmp_path: Path) -> None:
    # A broken copy of chapter 2: the wall-time assert this book used to have, put back.
    text = (ROOT / "chapters" / "02-coupling-flows.md").read_text()
    broken = tmp_path / "02-coupling-flows.md"
    broken.write_text(text + "\n```{code-cell} ipython3\nassert seconds['RealNVP'] <= 90\n```\n")
    assert [o.names for o in timing.chapter_offences(broken)] == [("seconds",)]
