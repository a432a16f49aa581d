"""Reverse KL and the ELBO on Gaussian cases where KL(q || p) is known exactly."""

from __future__ import annotations

import math

import pytest
import torch

import nfcourse as nf
from nfcourse.training.engine import TrainConfig
from nfcourse.vi import ReverseKL, elbo, fit_reverse_kl, log_weights


def gaussian_energy(mean, sd):
    """Unnormalised N(mean, diag(sd^2)): U = sum ((x - m) / s)^2 / 2, log Z = sum log(s sqrt(2 pi))."""
    m = torch.as_tensor(mean, dtype=torch.float64)
    s = torch.as_tensor(sd, dtype=torch.float64)

    def log_p(x):
        return -0.5 * (((x - m.to(x)) / s.to(x)) ** 2).sum(dim=1)

    return log_p, float(torch.log(s * math.sqrt(2 * math.pi)).sum())


def affine_model(log_scale, shift):
    return nf.FlowModel(nf.ElementwiseAffine(2, torch.tensor(log_scale), torch.tensor(shift))
                        ).double()


def exact_kl(q_mean, q_sd, p_mean, p_sd):
    q_mean, q_sd, p_mean, p_sd = (torch.as_tensor(v, dtype=torch.float64)
                                  for v in (q_mean, q_sd, p_mean, p_sd))
    return float((torch.log(p_sd / q_sd) + (q_sd**2 + (q_mean - p_mean) ** 2) / (2 * p_sd**2)
                  - 0.5).sum())


def test_elbo_gap_is_the_exact_kl():
    log_p, log_z = gaussian_energy([1.0, -0.5], [0.7, 1.5])
    q = affine_model([0.2, 0.1], [0.5, 0.0])
    est = elbo(q, log_p, n=200_000, seed=0)
    kl = exact_kl([0.5, 0.0], [math.exp(0.2), math.exp(0.1)], [1.0, -0.5], [0.7, 1.5])
    assert abs(est.gap(log_z) - kl) < 4 * est.se
    assert est.gap(log_z) > 0  # the ELBO is a lower bound


def test_at_the_optimum_the_elbo_is_exact_and_the_gradient_vanishes():
    log_p, log_z = gaussian_energy([1.0, -0.5], [0.7, 1.5])
    q = affine_model([math.log(0.7), math.log(1.5)], [1.0, -0.5])
    est = elbo(q, log_p, n=1000, seed=0)
    # log w is constant (up to the float32 rounding of the parameters' initial values)
    assert abs(est.value - log_z) < 1e-6 and est.se < 1e-6
    # the pathwise gradient is zero in expectation (not per sample): with 400,000 samples
    # its Monte-Carlo error is about 5e-4
    objective = ReverseKL(q, log_p)
    z = objective.noise(400_000, torch.Generator().manual_seed(0))
    objective.loss(z).backward()
    for p in q.parameters():
        assert float(p.grad.abs().max()) < 3e-3


def test_gradient_points_towards_the_target():
    """Too narrow a q: the loss decreases when the log-scale grows (gradient negative), and the
    shift is pulled towards the target mean."""
    log_p, _ = gaussian_energy([1.0, 1.0], [1.0, 1.0])
    q = affine_model([-1.0, -1.0], [0.0, 0.0])
    objective = ReverseKL(q, log_p)
    objective.loss(objective.noise(8192, torch.Generator().manual_seed(0))).backward()
    flow = q.flow
    assert bool((flow.log_scale.grad < 0).all())
    assert bool((flow.shift.grad < 0).all())
    # the exact gradients: d/dlog_s KL = -1 + s^2 / sigma^2, d/dmu KL = (mu - m) / sigma^2
    torch.testing.assert_close(flow.log_scale.grad, torch.full((2,), -1 + math.exp(-2),
                                                                dtype=torch.float64),
                               atol=0.02, rtol=0)
    torch.testing.assert_close(flow.shift.grad, torch.full((2,), -1.0, dtype=torch.float64),
                               atol=0.05, rtol=0)


def test_fit_reverse_kl_reaches_the_target_through_the_engine():
    torch.manual_seed(0)
    log_p, log_z = gaussian_energy([1.0, -0.5], [0.7, 1.5])
    q = nf.FlowModel(nf.ElementwiseAffine(2))
    history = fit_reverse_kl(q, log_p, TrainConfig(steps=400, batch_size=256, lr=5e-2,
                                                   warmup=10, eval_every=100, eval_size=1024))
    assert history.finished and history.eval_loss[-1] < history.eval_loss[0]
    est = elbo(q, log_p, n=20_000)
    assert 0 <= est.gap(log_z) + 3 * est.se and est.gap(log_z) < 0.01
    torch.testing.assert_close(q.flow.shift.detach(), torch.tensor([1.0, -0.5]), atol=0.05,
                               rtol=0)


def test_evaluate_is_deterministic_and_matches_loss():
    q = nf.realnvp(2, 2, 8)
    from nfcourse.vi import rezende_energy
    objective = ReverseKL(q, rezende_energy("U2"))
    z = objective.noise(512, torch.Generator().manual_seed(3))
    assert objective.evaluate(z) == objective.evaluate(z)
    assert objective.evaluate(z) == pytest.approx(float(objective.loss(z).detach()), rel=1e-5)
    x, lw = log_weights(q, rezende_energy("U2"), z)
    assert x.shape == (512, 2) and lw.shape == (512,)


def test_bad_inputs_name_the_fix():
    with pytest.raises(TypeError, match="FlowModel"):
        ReverseKL(nf.Planar(2), lambda x: x.sum(1))
    with pytest.raises(TypeError, match="log-density"):
        ReverseKL(nf.realnvp(2, 2, 8), 3.0)
    with pytest.raises(ValueError, match="n >= 2"):
        elbo(nf.realnvp(2, 2, 8), lambda x: -x.pow(2).sum(1), n=1)
    with pytest.raises(ValueError, match="shape"):
        ReverseKL(nf.realnvp(2, 2, 8), lambda x: x.sum(1)).evaluate(torch.zeros(4, 3))


def test_families_are_valid_flows():
    from nfcourse.models import mean_field, planar_model, radial_model
    g = torch.Generator().manual_seed(0)
    for model in (planar_model(2, 3, seed=1), radial_model(2, 3, seed=1), mean_field(2)):
        nf.check_flow(model.flow, torch.randn(6, 2, generator=g))
        x, log_q = model.sample_and_log_prob(16, torch.Generator().manual_seed(2))
        torch.testing.assert_close(log_q, model.log_prob(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="at least one layer"):
        planar_model(2, 0)
