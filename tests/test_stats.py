"""nfcourse.metrics.stats: mean ± standard error and the percentile bootstrap."""

import math

import numpy as np
import pytest
import torch

from nfcourse.metrics.stats import bootstrap_interval, mean_se


def test_mean_se_by_hand_for_tensors_arrays_and_lists():
    # values 1..4: mean 2.5, sample std sqrt(5/3), se = sqrt(5/3) / 2
    expected = (2.5, math.sqrt(5 / 3) / 2)
    for values in (torch.tensor([1.0, 2.0, 3.0, 4.0]), np.array([1, 2, 3, 4]), [1.0, 2, 3, 4]):
        assert mean_se(values) == pytest.approx(expected, rel=1e-12)


def test_mean_se_is_float64_and_detaches():
    x = torch.tensor([1e8, 1e8 + 1, 1e8 + 2], dtype=torch.float64, requires_grad=True)
    mean, se = mean_se(x)
    assert mean == 1e8 + 1 and se == pytest.approx(1 / math.sqrt(3))


def test_mean_se_single_value_has_nan_error_and_bad_input_raises():
    mean, se = mean_se(torch.tensor([3.0]))
    assert mean == 3.0 and math.isnan(se)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        mean_se(torch.zeros(0))
    with pytest.raises(ValueError, match=r"got shape \[2, 2\]"):
        mean_se(torch.zeros(2, 2))


def test_mean_se_covers_the_truth_at_the_nominal_rate():
    g = torch.Generator().manual_seed(0)
    hits = 0
    for _ in range(400):
        mean, se = mean_se(torch.randn(50, generator=g))
        hits += abs(mean) < 1.96 * se
    assert 0.9 < hits / 400 < 0.99


def test_bootstrap_interval_of_a_mean_matches_the_normal_interval():
    x = np.random.default_rng(1).normal(0.0, 1.0, 2000)
    lo, hi = bootstrap_interval(np.mean, x, n_boot=2000, seed=0)
    mean, se = mean_se(x)
    assert lo == pytest.approx(mean - 1.96 * se, abs=0.2 * se)
    assert hi == pytest.approx(mean + 1.96 * se, abs=0.2 * se)


def test_bootstrap_interval_resamples_groups_separately_and_is_seeded():
    # Stratified: group sizes are kept, so the difference of means sees both groups' noise.
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 400), rng.normal(0, 3, 100)
    diff = lambda u, v: float(u.mean() - v.mean())
    lo, hi = bootstrap_interval(diff, a, b, seed=4)
    se = math.sqrt(a.var(ddof=1) / 400 + b.var(ddof=1) / 100)
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert bootstrap_interval(diff, a, b, seed=4) == (lo, hi)
    assert bootstrap_interval(diff, a, b, seed=5) != (lo, hi)


def test_vectorised_statistic_gives_the_same_interval():
    x = np.random.default_rng(3).normal(size=300)
    loop = bootstrap_interval(lambda u: float(np.median(u)), x, n_boot=300, seed=1)
    vec = bootstrap_interval(lambda u, axis: np.median(u, axis=axis), x, n_boot=300, seed=1,
                             vectorized=True)
    assert vec == pytest.approx(loop)


@pytest.mark.parametrize("kwargs, match", [({"n_boot": 5}, "n_boot"), ({"n_boot": True}, "n_boot"),
                                           ({"level": 95}, "level")])
def test_bootstrap_interval_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_interval(np.mean, np.arange(10.0), **kwargs)
    with pytest.raises(ValueError, match="at least one sample"):
        bootstrap_interval(np.mean)
