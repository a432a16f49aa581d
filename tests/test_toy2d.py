"""2-D data sets and the exact density / entropy of noisy two moons."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from sklearn.datasets import make_moons

from nfcourse.data import (DATASETS_2D, make_2d, moons_entropy, moons_lecture_split_floor,
                           moons_log_prob, moons_marginal_kl_to_standard_normal,
                           moons_marginal_log_prob, score_on_checkerboard, score_on_moons,
                           two_moons)


def test_moon_geometry_matches_sklearn_make_moons():
    # evenly spaced angles and no noise: exactly scikit-learn's point set, in its order
    for n in (10, 101):
        ours = two_moons(n, noise=0.0, grid_angles=True).double().numpy()
        ref, _ = make_moons(n, shuffle=False, noise=0.0)
        np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_sklearn_noisy_moons_have_our_density():
    # make_moons(noise=0.1) spaces angles evenly; for large n that is the uniform angle law, so
    # its average log-density under our exact density must be -H (within the sampling error)
    x, _ = make_moons(20_000, noise=0.1, random_state=0)
    logp = moons_log_prob(torch.from_numpy(x))
    se = float(logp.std()) / math.sqrt(len(x))
    assert abs(float(-logp.mean()) - moons_entropy()) < 4 * se


def test_sampler_statistics_match_sklearn():
    ours = two_moons(40_000, seed=3).double().numpy()
    ref, _ = make_moons(40_000, noise=0.1, random_state=3)
    np.testing.assert_allclose(ours.mean(0), ref.mean(0), atol=0.02)
    np.testing.assert_allclose(np.cov(ours.T), np.cov(ref.T), atol=0.02)


def test_log_prob_matches_adaptive_quadrature():
    # an independent computation of the same integral, point by point
    noise = 0.1
    pts = [(0.0, 1.0), (0.5, 0.2), (1.5, -0.4), (-1.3, 0.1), (2.5, 1.5), (0.9, 0.05)]

    def density(x, y):
        total = 0.0
        for (cx, cy), sign in (((0.0, 0.0), 1.0), ((1.0, 0.5), -1.0)):
            f = lambda t: math.exp(-((x - cx - sign * math.cos(t)) ** 2 + (
                y - cy - sign * math.sin(t)) ** 2) / (2 * noise**2))
            total += integrate.quad(f, 0, math.pi, epsabs=0, epsrel=1e-12, limit=200)[0]
        return total / (2 * math.pi * noise**2) / math.pi / 2

    ours = moons_log_prob(torch.tensor(pts, dtype=torch.float64))
    ref = torch.tensor([math.log(density(*p)) for p in pts], dtype=torch.float64)
    torch.testing.assert_close(ours, ref, atol=1e-7, rtol=1e-7)


def test_quadrature_rule_is_converged_even_far_from_the_data():
    x = torch.cat([two_moons(500, seed=1).double(), torch.tensor([[-2.0, -1.5], [3.0, 2.0]],
                                                                 dtype=torch.float64)])
    coarse = moons_log_prob(x)
    fine = moons_log_prob(x, panels=256)
    assert float((coarse - fine).abs().max()) < 1e-9
    assert bool(torch.isfinite(coarse).all())


def test_density_integrates_to_one():
    h = 0.025
    xs = torch.arange(-2.0, 3.0, h, dtype=torch.float64) + h / 2
    ys = torch.arange(-1.5, 2.0, h, dtype=torch.float64) + h / 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    p = moons_log_prob(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)).exp()
    assert abs(float(p.sum()) * h * h - 1) < 1e-6


def test_entropy_grid_quadrature_agrees_with_monte_carlo():
    h = moons_entropy()
    logp = moons_log_prob(two_moons(40_000, seed=7))
    mc, se = float(-logp.mean()), float(logp.std()) / math.sqrt(40_000)
    assert abs(h - mc) < 4 * se
    # the grid is converged (a finer spacing changes nothing that matters) ...
    assert abs(moons_entropy(0.1, spacing=0.02) - h) < 1e-8
    # ... and the value is the one the digest of the lecture quotes
    assert abs(h - 1.0076) < 5e-4


def test_doubling_the_noise_adds_about_log_2():
    # the noise only blurs the moons across the curve (1 direction), not along it, so doubling
    # it adds about log 2 to the entropy (a 2-D blob would gain 2 log 2)
    assert abs(moons_entropy(0.2) - moons_entropy(0.1) - math.log(2)) < 0.05


@pytest.mark.parametrize("name", sorted(DATASETS_2D))
def test_every_data_set_is_reproducible_and_well_formed(name):
    a = make_2d(name, 1000, seed=5)
    assert a.shape == (1000, 2) and a.dtype == torch.float32
    assert bool(torch.isfinite(a).all())
    assert torch.equal(a, make_2d(name, 1000, seed=5))
    assert not torch.equal(a, make_2d(name, 1000, seed=6))
    assert a.std(0).min() > 0.2  # spread out, not a point mass
    g = torch.Generator().manual_seed(5)
    assert torch.equal(make_2d(name, 1000, generator=g), a)
    assert make_2d(name, 0, seed=1).shape == (0, 2)


def test_bad_requests_raise_with_the_fix():
    with pytest.raises(ValueError, match="unknown 2-D data set 'moonz'.*moons"):
        make_2d("moonz", 10)
    with pytest.raises(ValueError, match="non-negative int"):
        make_2d("moons", -1)
    with pytest.raises(ValueError, match="either generator= or seed="):
        make_2d("moons", 5, generator=torch.Generator(), seed=1)
    with pytest.raises(ValueError, match=r"shape \[B, 2\]"):
        moons_log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        moons_log_prob(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="noise must be > 0"):
        moons_log_prob(torch.zeros(1, 2), noise=0.0)


def test_score_of_the_true_density_is_zero_gap():
    s = score_on_moons(moons_log_prob, n=20_000, seed=1)
    assert s.kl_paired == 0.0 and s.kl_paired_se == 0.0
    assert abs(s.kl_gap) < 4 * s.kl_gap_se
    assert s.nll_se < 0.01


def test_score_of_a_worse_density_is_positive():
    # N(0, I) is a poor model of the moons: its KL gap is clearly positive
    std_normal = lambda x: -0.5 * (x**2).sum(1) - math.log(2 * math.pi)
    s = score_on_moons(std_normal, n=20_000)
    assert s.kl_paired > 0.5 and s.kl_gap > 0.5
    assert abs(s.kl_gap - s.kl_paired) < 4 * s.nll_se


def test_checkerboard_score_of_its_true_density_and_a_paired_difference():
    true = lambda x: torch.full((x.shape[0],), -math.log(8.0), dtype=torch.float64)
    s = score_on_checkerboard(true)
    assert s.nll == pytest.approx(math.log(8.0)) and s.kl_gap == pytest.approx(0.0, abs=1e-12)
    # a model that spreads mass over all of [-2, 2]^2 loses exactly log 2 on every point
    wide = score_on_checkerboard(lambda x: torch.full((x.shape[0],), -math.log(16.0),
                                                      dtype=torch.float64))
    assert wide.kl_paired == pytest.approx(math.log(2.0))
    assert torch.allclose(wide.log_q - s.log_q, torch.full((20_000,), -math.log(2.0),
                                                          dtype=torch.float64))
    with pytest.raises(ValueError, match="score_on_checkerboard: use at least 20,000"):
        score_on_checkerboard(true, n=100)


def test_score_rejects_small_tests_and_broken_models():
    with pytest.raises(ValueError, match="at least 20,000"):
        score_on_moons(moons_log_prob, n=1000)
    with pytest.raises(ValueError, match="not finite"):
        score_on_moons(lambda x: torch.full((x.shape[0],), float("nan")))
    with pytest.raises(ValueError, match="one log-density per point"):
        score_on_moons(lambda x: torch.zeros(x.shape[0], 2))


def test_marginal_is_the_joint_integrated_over_x2():
    u = torch.tensor([-1.2, 0.0, 0.7, 1.9], dtype=torch.float64)
    h = 0.005
    ys = torch.arange(-2.0, 2.5, h, dtype=torch.float64) + h / 2
    for coord in (0, 1):
        pts = torch.stack([u.repeat_interleave(len(ys)), ys.repeat(len(u))], 1)
        if coord == 1:
            pts = pts.flip(1)
        joint = moons_log_prob(pts).exp().reshape(len(u), len(ys)).sum(1) * h
        torch.testing.assert_close(moons_marginal_log_prob(u, coord).exp(), joint,
                                   atol=1e-9, rtol=1e-7)


def test_lecture_split_floor_decomposes_sensibly():
    h, kl_x1 = moons_entropy(), moons_marginal_kl_to_standard_normal(0)
    floor = moons_lecture_split_floor()
    assert kl_x1 > 0.1
    # x_1 ~ N(0,1) costs kl_x1; a Gaussian x_2 | x_1 costs more on top
    assert floor > h + kl_x1 + 0.1
    assert abs(moons_lecture_split_floor(0.1, spacing=0.02) - floor) < 1e-8
    # the floor is attained by the conditional Gaussian with the true moments: check by
    # Monte Carlo that that model's NLL equals the floor
    x = two_moons(40_000, seed=11).double()
    grid = torch.linspace(-2.2, 3.2, 271, dtype=torch.float64)
    ys = torch.arange(-1.6, 2.1, 0.02, dtype=torch.float64)
    pts = torch.stack([grid.repeat_interleave(len(ys)), ys.repeat(len(grid))], 1)
    p = moons_log_prob(pts).exp().reshape(len(grid), len(ys))
    mean = (p * ys).sum(1) / p.sum(1)
    var = (p * ys**2).sum(1) / p.sum(1) - mean**2
    m = torch.tensor(np.interp(x[:, 0], grid, mean))
    v = torch.tensor(np.interp(x[:, 0], grid, var))
    nll = 0.5 * x[:, 0] ** 2 + 0.5 * math.log(2 * math.pi) + 0.5 * torch.log(
        2 * math.pi * v) + (x[:, 1] - m) ** 2 / (2 * v)
    assert abs(float(nll.mean()) - floor) < 4 * float(nll.std()) / math.sqrt(40_000)
