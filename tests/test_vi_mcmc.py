"""The MCMC reference: diagnostics on known cases, HMC on a known posterior, the BLR model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from nfcourse.vi import (BayesianLogisticRegression, breast_cancer, effective_sample_size, hmc,
                         mc_standard_error, split_rhat)


def ar1(chains, n, phi, seed=0):
    """Stationary AR(1) chains x_t = phi x_{t-1} + e_t: ESS / draws = (1 - phi) / (1 + phi)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((chains, n))
    noise[:, 0] /= math.sqrt(1 - phi**2)  # start in the stationary distribution
    return lfilter([1.0], [1.0, -phi], noise, axis=1)


def test_rhat_is_one_for_iid_chains_and_known_for_shifted_ones():
    rng = np.random.default_rng(0)
    iid = rng.standard_normal((4, 20_000))
    assert abs(float(split_rhat(iid)[0]) - 1) < 0.002
    shifted = iid + np.array([0, 0, 0, 3.0])[:, None]
    # 8 split chains with means (0 x 6, 3 x 2): variance of the means 13.5 / 7, W = 1
    expected = math.sqrt(1 + 13.5 / 7)
    assert float(split_rhat(shifted)[0]) == pytest.approx(expected, rel=0.01)
    # a chain that drifts is caught by the split even when all chains agree
    drift = iid + np.linspace(0, 2, 20_000)[None, :]
    assert float(split_rhat(drift)[0]) > 1.1


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9])
def test_ess_matches_the_ar1_closed_form(phi):
    x = ar1(4, 100_000, phi)
    expected = x.size * (1 - phi) / (1 + phi)
    assert float(effective_sample_size(x)[0]) == pytest.approx(expected, rel=0.1)


def test_ess_of_disagreeing_chains_is_small():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 5000)) + np.array([0, 0, 5, 5])[:, None]
    assert float(effective_sample_size(x)[0]) < 100


def test_mc_standard_error_is_sd_over_root_ess():
    x = ar1(4, 10_000, 0.5, seed=2)
    se = float(mc_standard_error(x)[0])
    assert se == pytest.approx(x.std(ddof=1) / math.sqrt(float(effective_sample_size(x)[0])))


def test_diagnostics_agree_with_arviz_when_installed():
    az = pytest.importorskip("arviz")
    x = ar1(4, 2000, 0.7, seed=3)
    assert float(split_rhat(x)[0]) == pytest.approx(float(az.rhat(x, method="split")), rel=1e-3)
    assert float(effective_sample_size(x)[0]) == pytest.approx(
        float(az.ess(x, method="mean")), rel=0.05)


def test_hmc_recovers_a_correlated_gaussian():
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.8, 0.0], [0.8, 1.0, 0.3], [0.0, 0.3, 0.5]], dtype=torch.float64)
    prec = torch.linalg.inv(cov)

    def log_prob(x):
        d = x - mean
        return -0.5 * ((d @ prec) * d).sum(1)

    x0 = 3 * torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    run = hmc(log_prob, x0, warmup=500, draws=1500, leapfrog=8, seed=0)
    assert float(run.rhat().max()) < 1.01
    ess = run.ess()
    assert float(ess.min()) > 1000
    assert 0.6 < run.acceptance < 0.95 and run.divergences == 0
    draws = run.flat()
    se = mc_standard_error(run.samples)
    assert bool(((draws.mean(0) - mean).abs() < 4 * se).all())
    # variances: the s.e. of a variance estimate is about var * sqrt(2 / ESS)
    var = draws.var(0)
    assert bool(((var - cov.diagonal()).abs() < 4 * cov.diagonal() * (2 / ess).sqrt()).all())
    corr01 = float(torch.corrcoef(draws.T)[0, 1])
    assert abs(corr01 - 0.8) < 0.03
    # the adapted metric is the posterior variance
    torch.testing.assert_close(run.inv_metric, cov.diagonal(), rtol=0.3, atol=0)


def test_hmc_recovers_conjugate_bayesian_linear_regression():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64) + 0.5 * torch.randn(
        50, generator=g, dtype=torch.float64)
    noise, prior = 0.5, 1.0
    post_prec = x.T @ x / noise**2 + torch.eye(3, dtype=torch.float64) / prior**2
    post_cov = torch.linalg.inv(post_prec)
    post_mean = post_cov @ (x.T @ y) / noise**2

    def log_prob(b):
        resid = y[None, :] - b @ x.T
        return -0.5 * (resid / noise).pow(2).sum(1) - 0.5 * (b / prior).pow(2).sum(1)

    run = hmc(log_prob, torch.zeros(4, 3, dtype=torch.float64), warmup=400, draws=1000,
              leapfrog=6, seed=1)
    se = mc_standard_error(run.samples)
    assert bool(((run.flat().mean(0) - post_mean).abs() < 4 * se).all())
    sd = run.flat().std(0)
    torch.testing.assert_close(sd, post_cov.diagonal().sqrt(), rtol=0.1, atol=0)


def test_logistic_posterior_pieces():
    data = breast_cancer(n_train=200, seed=0)
    assert data.dim == 9 and data.x_train.shape == (200, 9) and len(data.names) == 9
    assert torch.allclose(data.x_train[:, 1:].mean(0), torch.zeros(8, dtype=torch.float64),
                          atol=1e-10)
    model = BayesianLogisticRegression(data.x_train, data.y_train, prior_scale=2.0)
    beta = torch.randn(5, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lj = model.log_joint(beta)
    # against a plain loop
    ref = []
    for b in beta:
        p = torch.sigmoid(data.x_train @ b)
        ll = (data.y_train * p.log() + (1 - data.y_train) * (1 - p).log()).sum()
        lp = torch.distributions.Normal(0.0, 2.0).log_prob(b).sum()
        ref.append(ll + lp)
    torch.testing.assert_close(lj, torch.stack(ref), rtol=1e-9, atol=1e-9)
    # float32 works for the flow, and the gradient is the autograd one of the loop
    assert model.log_joint(beta.float()).dtype == torch.float32
    g = model.grad_log_joint(beta[:1])
    b = beta[:1].clone().requires_grad_(True)
    p = torch.sigmoid(data.x_train @ b[0])
    ((data.y_train * p.log() + (1 - data.y_train) * (1 - p).log()).sum()
     + torch.distributions.Normal(0.0, 2.0).log_prob(b[0]).sum()).backward()
    torch.testing.assert_close(g, b.grad, rtol=1e-8, atol=1e-8)
    # predictive log-likelihood of a single draw is the mean Bernoulli log-likelihood
    one = beta[:1]
    pll = BayesianLogisticRegression.predictive_log_lik(one, data.x_test, data.y_test)
    p = torch.sigmoid(data.x_test @ one[0])
    ref = (data.y_test * p.log() + (1 - data.y_test) * (1 - p).log()).mean()
    assert pll == pytest.approx(float(ref), rel=1e-9)


def test_bad_inputs_name_the_fix():
    with pytest.raises(ValueError, match="\\[C, D\\]"):
        hmc(lambda x: -x.pow(2).sum(1), torch.zeros(3))
    with pytest.raises(ValueError, match="not finite"):
        hmc(lambda x: x.sum(1) - math.inf, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="at least 4 draws"):
        split_rhat(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="stuck"):
        split_rhat(np.zeros((2, 10)))
    with pytest.raises(ValueError, match="choose from"):
        breast_cancer(features=("mean nothing",))
    data = breast_cancer(n_train=100)
    with pytest.raises(ValueError, match="labels"):
        BayesianLogisticRegression(data.x_train, data.y_train * 2)
    with pytest.raises(ValueError, match="shape \\[B, 9\\]"):
        BayesianLogisticRegression(data.x_train, data.y_train).log_joint(torch.zeros(2, 3))
