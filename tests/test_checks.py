import math

import numpy as np
import pytest
import torch

from nfcourse.book.checks import CheckFailed, check, check_close


def test_passing_values_pass() -> None:
    check("bits/dim", 1.5, above=("entropy", 1.0), below=("histogram", 1.722), better="lower")
    check("auroc", 0.97, above=0.95)
    check("kl", 0.01, below=("target", 0.02))
    check("numpy", np.float64(0.5), above=0.0, below=1.0)
    check("torch", torch.tensor(0.5), above=0.0, below=1.0)
    check("int", 3, above=2)


def test_check_failed_is_an_assertion_error() -> None:
    assert issubclass(CheckFailed, AssertionError)


def test_does_not_beat_the_baseline() -> None:
    with pytest.raises(CheckFailed, match=r"bits/dim = 1.878 does not beat 'per-pixel histogram' = 1.722"):
        check("bits/dim", 1.878, above=0.9, below=("per-pixel histogram", 1.722), better="lower")


def test_too_good_to_be_true() -> None:
    with pytest.raises(CheckFailed, match=r"is below 'entropy - 3 s.e.' = 1.0021: too good to be true"):
        check("held-out NLL", 0.9, above=("entropy - 3 s.e.", 1.0021), below=2.0, better="lower")


def test_higher_is_better_directions() -> None:
    with pytest.raises(CheckFailed, match="does not beat 'chance' = 0.5"):
        check("auroc", 0.4, above=("chance", 0.5), below=1.0, better="higher")
    with pytest.raises(CheckFailed, match="is above 'log p' = -1: too good to be true"):
        check("log-likelihood", -0.5, above=-3.0, below=("log p", -1.0), better="higher")


def test_neutral_message_names_the_bound() -> None:
    with pytest.raises(CheckFailed, match=r"ratio = 3 is not above '10' = 10"):
        check("ratio", 3.0, above=10.0)
    with pytest.raises(CheckFailed, match=r"gap = 0.5 is not below 'limit' = 0.1"):
        check("gap", 0.5, below=("limit", 0.1))


def test_bounds_are_strict() -> None:
    with pytest.raises(CheckFailed):
        check("x", 1.0, above=1.0)
    with pytest.raises(CheckFailed):
        check("x", 1.0, below=1.0)


def test_a_check_without_bounds_is_rejected() -> None:
    with pytest.raises(ValueError, match="bounds nothing"):
        check("x", 1.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="not finite"):
        check("held-out NLL", bad, below=2.0)
    with pytest.raises(ValueError, match="not finite"):
        check("x", 1.0, below=("histogram", bad))
    with pytest.raises(ValueError, match="not finite"):
        check_close("x", bad, 1.0, 0.1)


def test_contradictory_bounds_are_rejected() -> None:
    with pytest.raises(ValueError, match="no value could pass"):
        check("x", 1.0, above=("floor", 2.0), below=("ceiling", 1.5))


def test_malformed_bounds_and_values_are_rejected() -> None:
    with pytest.raises(TypeError):
        check("x", 1.0, above=(1.0, "floor"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        check("x", "1.0", above=0.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        check("x", True, above=0.0)
    with pytest.raises(ValueError):
        check("x", 1.0, above=0.0, better="smaller")  # type: ignore[arg-type]


def test_check_close() -> None:
    check_close("mass", 1.004, 1.0, 0.01, "one")
    with pytest.raises(CheckFailed, match=r"mass = 1.02 is 0.02 from 'one' = 1 \(tolerance 0.01\), above it"):
        check_close("mass", 1.02, 1.0, 0.01, "one")
    with pytest.raises(ValueError, match="tolerance must be positive"):
        check_close("mass", 1.0, 1.0, 0.0)


def test_versus_says_who_wins_and_calls_small_gaps_a_tie() -> None:
    from nfcourse.book.checks import versus

    assert versus(1.70, 0.01, 1.80).startswith("beats them by 0.100 ± 0.010")
    assert versus(1.90, 0.01, 1.80).startswith("loses to them by 0.100")
    assert versus(1.805, 0.01, 1.80).startswith("is level with them (a difference of +0.005")
    assert versus(2.0, 0.01, 1.0, better="higher", unit="nats").endswith("nats")
    assert versus(2.0, 0.01, 1.0, better="higher").startswith("beats")
    with pytest.raises(ValueError, match="se and ties_within"):
        versus(1.0, -0.1, 1.0)
