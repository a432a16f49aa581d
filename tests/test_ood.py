"""Tests of nfcourse.metrics.ood: percentile threshold, metrics, AUROC against scikit-learn, bootstrap."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from nfcourse.metrics import ood


def _sklearn_auroc(a: np.ndarray, b: np.ndarray) -> float:
    # outliers are the positive class, -log p the score
    labels = np.r_[np.zeros(len(a)), np.ones(len(b))]
    return float(roc_auc_score(labels, -np.r_[a, b]))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_sklearn_continuous(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, 1.0, 200 + 37 * seed)
    b = rng.normal(-1.0 + 0.5 * seed, 1.5, 150 + 11 * seed)
    assert ood.auroc(a, b) == pytest.approx(_sklearn_auroc(a, b), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    # few distinct values: many ties within and across the two groups
    a = rng.integers(-3, 3, 300).astype(float)
    b = rng.integers(-5, 2, 250).astype(float)
    assert ood.auroc(a, b) == pytest.approx(_sklearn_auroc(a, b), abs=1e-12)


def test_auroc_extremes_and_tensor_input() -> None:
    a = torch.tensor([1.0, 2.0, 3.0])
    assert ood.auroc(a, torch.tensor([-1.0, 0.0])) == 1.0   # outliers all less likely
    assert ood.auroc(a, torch.tensor([5.0, 6.0])) == 0.0
    assert ood.auroc(a, a.clone()) == pytest.approx(0.5)


@pytest.mark.parametrize("percent", [1, 5, 12.5, 50, 95])
@pytest.mark.parametrize("n", [100, 1000, 4321])
def test_threshold_flags_percent_of_validation(percent: float, n: int) -> None:
    val = torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    t = ood.percentile_threshold(val, percent)
    flagged = ood.flag_outliers(val, t).mean()
    # of n distinct values, floor or ceil of percent% lie strictly below the percentile
    assert abs(flagged - percent / 100) <= 1 / n + 1e-12


def test_threshold_on_fresh_normal_data_gives_fpr_near_percent() -> None:
    g = torch.Generator().manual_seed(0)
    val, test = torch.randn(20_000, generator=g), torch.randn(20_000, generator=g)
    r = ood.evaluate_ood(val, test, torch.randn(100, generator=g) - 5, n_boot=20)
    assert r.fpr == pytest.approx(0.05, abs=0.006)
    assert r.tpr == 1.0


def test_evaluate_ood_metrics_by_hand() -> None:
    val = np.arange(100, dtype=float)                 # 5th percentile: 4.95
    inl = np.array([0.0, 10.0, 20.0, 30.0])           # one of four flagged
    out = np.array([-1.0, 1.0, 2.0, 50.0, 60.0])      # three of five flagged
    r = ood.evaluate_ood(val, inl, out, n_boot=50)
    assert r.threshold == pytest.approx(4.95)
    assert r.fpr == pytest.approx(0.25) and r.tpr == pytest.approx(0.6)
    assert r.accuracy == pytest.approx((3 + 3) / 9)
    assert r.auroc == pytest.approx(_sklearn_auroc(inl, out))
    assert r.accuracy_ci[0] <= r.accuracy <= r.accuracy_ci[1]
    assert "AUROC" in str(r)


def test_bootstrap_ci_covers_and_shrinks() -> None:
    rng = np.random.default_rng(1)
    small = ood.bootstrap_ci(ood._auroc, rng.normal(0, 1, 200), rng.normal(-1, 1, 200),
                             n_boot=400)
    big = ood.bootstrap_ci(ood._auroc, rng.normal(0, 1, 5000), rng.normal(-1, 1, 5000),
                           n_boot=400)
    from scipy.stats import norm
    truth = float(norm.cdf(1 / np.sqrt(2)))           # P(X_in > X_out) for these normals
    assert big[0] <= truth <= big[1]
    assert small[0] < small[1] and (big[1] - big[0]) < 0.5 * (small[1] - small[0])


def test_bootstrap_is_reproducible_and_seeded() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 300), rng.normal(-1, 1, 300)
    assert ood.bootstrap_ci(ood._auroc, a, b, seed=3) == ood.bootstrap_ci(ood._auroc, a, b, seed=3)
    assert ood.bootstrap_ci(ood._auroc, a, b, seed=3) != ood.bootstrap_ci(ood._auroc, a, b, seed=4)


def test_uniform_box_and_centred_box() -> None:
    box = ood.centred_box(2.0)
    assert box == (-1.5, 2.5, -1.75, 2.25)
    x = ood.uniform_box(10_000, box, seed=1)
    assert x.shape == (10_000, 2) and x.dtype == torch.float32
    assert float(x[:, 0].min()) >= -1.5 and float(x[:, 0].max()) <= 2.5
    assert float(x[:, 1].min()) >= -1.75 and float(x[:, 1].max()) <= 2.25
    assert abs(float(x[:, 0].mean()) - 0.5) < 0.05
    assert torch.equal(x, ood.uniform_box(10_000, box, seed=1))


@pytest.mark.parametrize("bad, match", [
    (np.zeros((3, 2)), "1-D"),
    (np.array([]), "empty"),
    (np.array([0.0, np.nan]), "NaN or infinite"),
    (np.array([0.0, -np.inf]), "clip"),
    ([1.0, 2.0], "torch.Tensor or NumPy array"),
])
def test_bad_scores_raise_clear_errors(bad: object, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        ood.auroc(bad, np.array([1.0]))  # type: ignore[arg-type]


@pytest.mark.parametrize("percent", [0, 100, -5, 150, True, "5"])
def test_bad_percent_raises(percent: object) -> None:
    with pytest.raises(ValueError, match="strictly between 0 and 100"):
        ood.percentile_threshold(np.arange(10.0), percent)  # type: ignore[arg-type]


def test_other_bad_arguments() -> None:
    a = np.arange(10.0)
    with pytest.raises(ValueError, match="n_boot"):
        ood.bootstrap_ci(ood._auroc, a, a, n_boot=5)
    with pytest.raises(ValueError, match="level"):
        ood.bootstrap_ci(ood._auroc, a, a, level=95)
    with pytest.raises(ValueError, match="finite number"):
        ood.flag_outliers(a, float("nan"))
    with pytest.raises(ValueError, match="xmin < xmax"):
        ood.uniform_box(5, (1.0, 0.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="half_width"):
        ood.centred_box(-1.0)


def test_typicality_flags_points_that_are_too_likely() -> None:
    g = torch.Generator().manual_seed(7)
    ref, val, test = (torch.randn(5000, generator=g) for _ in range(3))
    too_likely = torch.full((500,), 4.0)                # far above every normal score
    one_sided = ood.evaluate_ood(val, test, too_likely, n_boot=20)
    assert one_sided.tpr == 0.0 and one_sided.auroc == 0.0   # never flagged, ranked last
    t = ood.evaluate_ood(ood.typicality_scores(val, ref), ood.typicality_scores(test, ref),
                         ood.typicality_scores(too_likely, ref), n_boot=20)
    assert t.tpr == 1.0 and t.auroc == 1.0
    assert t.fpr == pytest.approx(0.05, abs=0.012)
    s = ood.typicality_scores(np.array([1.0, -3.0]), np.array([0.0, 2.0]))
    assert s.tolist() == [0.0, -4.0]


@pytest.mark.parametrize("seed", range(3))
def test_vectorised_auroc_matches_sklearn_per_row(seed: int) -> None:
    # The bootstrap scores replicates row by row with ood._auroc; each row must be sklearn's.
    rng = np.random.default_rng(200 + seed)
    a = rng.integers(-3, 3, (4, 120)).astype(float)
    b = rng.integers(-5, 2, (4, 90)).astype(float)
    rows = ood._auroc(a, b)
    assert rows.shape == (4,)
    for i in range(4):
        assert rows[i] == pytest.approx(_sklearn_auroc(a[i], b[i]), abs=1e-12)


def test_evaluate_ood_interval_matches_bootstrap_ci() -> None:
    # The vectorised bootstrap inside evaluate_ood draws the same replicates as the public one.
    rng = np.random.default_rng(5)
    val, a, b = rng.normal(0, 1, 300), rng.normal(0, 1, 300), rng.normal(-1, 1, 200)
    r = ood.evaluate_ood(val, a, b, n_boot=200, seed=7)
    assert r.auroc_ci == pytest.approx(ood.bootstrap_ci(ood._auroc, a, b, n_boot=200, seed=8))


def test_resampling_the_validation_set_covers_the_threshold_noise() -> None:
    from nfcourse.metrics.stats import bootstrap_interval
    rng = np.random.default_rng(6)
    val, a, b = rng.normal(0, 1, 40), rng.normal(0, 1, 2000), rng.normal(-2, 1, 2000)
    fixed = ood.evaluate_ood(val, a, b, n_boot=300, seed=3)
    refit = ood.evaluate_ood(val, a, b, n_boot=300, seed=3, resample_validation=True)
    assert refit.accuracy == fixed.accuracy and refit.auroc_ci == fixed.auroc_ci
    # 40 validation points make a noisy threshold: the interval that covers it is wider
    assert refit.accuracy_ci[1] - refit.accuracy_ci[0] > \
        1.5 * (fixed.accuracy_ci[1] - fixed.accuracy_ci[0])

    def by_hand(v: np.ndarray, u: np.ndarray, w: np.ndarray) -> float:  # one replicate
        t = np.percentile(v, 5)
        return float(((u >= t).sum() + (w < t).sum()) / (len(u) + len(w)))
    assert refit.accuracy_ci == pytest.approx(
        bootstrap_interval(by_hand, val, a, b, n_boot=300, seed=3), abs=1e-12)


def test_in_box_is_the_support_of_uniform_box() -> None:
    box = ood.centred_box(1.0)
    assert bool(ood.in_box(ood.uniform_box(500, box, seed=1), box).all())
    far = torch.tensor([[0.5, 0.25], [1.6, 0.25], [0.5, -0.8], [1.5, 1.25]])
    assert ood.in_box(far, box).tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="n, 2"):
        ood.in_box(torch.zeros(3), box)
