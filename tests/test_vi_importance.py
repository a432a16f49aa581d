"""Importance sampling: log Z and ESS against closed forms (Gaussian proposal and target)."""

from __future__ import annotations

import math

import pytest
import torch

from nfcourse.vi import importance_log_z, kish_ess, log_mean_exp


def gaussian_case(n, d, m, s, seed=0):
    """Proposal q = N(0, s^2 I), target p~ = exp(-|x - m|^2 / 2) (log Z = d/2 log 2 pi)."""
    g = torch.Generator().manual_seed(seed)
    x = s * torch.randn(n, d, generator=g, dtype=torch.float64)
    log_q = -0.5 * (x / s).pow(2).sum(1) - d * math.log(s * math.sqrt(2 * math.pi))
    log_p = -0.5 * (x - m).pow(2).sum(1)
    return log_p - log_q, 0.5 * d * math.log(2 * math.pi)


def second_moment(d, m, s):
    """E_q[(p/q)^2] = int p^2 / q for p = N(m, 1), q = N(0, s^2), per dimension multiplied."""
    a = 1 - 1 / (2 * s**2)
    return (s / math.sqrt(2 * a) * math.exp(m**2 * (1 / a - 1))) ** d


@pytest.mark.parametrize("d,m,s", [(1, 0.5, 1.5), (2, 0.3, 1.2), (3, 0.0, 2.0)])
def test_log_z_and_ess_match_closed_forms(d, m, s):
    n = 200_000
    lw, log_z = gaussian_case(n, d, m, s)
    est = importance_log_z(lw)
    assert abs(est.log_z - log_z) < 4 * est.se
    # ESS / n -> 1 / E_q[w^2] with normalised weights (Z divided out)
    assert est.ess_fraction == pytest.approx(1 / second_moment(d, m, s), rel=0.03)
    # the delta-method s.e. matches its population value sqrt((E w^2 / Z^2 - 1) / n)
    assert est.se == pytest.approx(math.sqrt((second_moment(d, m, s) - 1) / n), rel=0.05)
    assert kish_ess(lw) == pytest.approx(est.ess)
    assert log_mean_exp(lw) == pytest.approx(est.log_z)


def test_se_is_calibrated_over_repetitions():
    estimates, ses = [], []
    for seed in range(200):
        lw, log_z = gaussian_case(2000, 2, 0.3, 1.3, seed=seed)
        est = importance_log_z(lw)
        estimates.append(est.log_z - log_z)
        ses.append(est.se)
    spread = torch.tensor(estimates).std().item()
    assert spread == pytest.approx(sum(ses) / len(ses), rel=0.2)
    assert abs(sum(estimates) / len(estimates)) < 3 * spread / math.sqrt(200) + 1e-3


def test_perfect_proposal_gives_exact_answer_and_full_ess():
    lw = torch.full((1000,), 2.5, dtype=torch.float64)
    est = importance_log_z(lw)
    assert est.log_z == pytest.approx(2.5, abs=1e-12)
    assert est.se == 0.0 and est.ess == pytest.approx(1000)


def test_one_dominant_weight_gives_ess_one_and_no_overflow():
    lw = torch.zeros(100, dtype=torch.float64)
    lw[7] = 1000.0
    assert kish_ess(lw) == pytest.approx(1.0)
    assert log_mean_exp(lw) == pytest.approx(1000.0 - math.log(100))
    lw[3] = -math.inf  # a zero weight is fine
    assert math.isfinite(importance_log_z(lw).log_z)


def test_bad_inputs_name_the_fix():
    with pytest.raises(ValueError, match="1-D"):
        importance_log_z(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="NaN"):
        kish_ess(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="every weight is zero"):
        log_mean_exp(torch.full((4,), -math.inf))
