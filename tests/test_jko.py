"""Chapter 7: JKO closed forms, the OU solution, the flow-based JKO solver and Langevin."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from nfcourse.jko import (JKOConfig, affine_map, banana_target, coupling_map, flow_jko,
                          gaussian_jko_path, gaussian_jko_step, gaussian_start, gaussian_target,
                          jko_step_1d, kl_gaussian, langevin, ou_1d, ou_solution, w2_gaussian)
from nfcourse.jko.targets import Target
from nfcourse.metrics.distances import w2

F64 = torch.float64


def _random_spd(g: torch.Generator, d: int = 2, low: float = 0.3) -> torch.Tensor:
    a = torch.randn(d, d, generator=g, dtype=F64)
    return a @ a.T + low * torch.eye(d, dtype=F64)


def _rotation(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s], [s, c]], dtype=F64)


# --------------------------------------------------------------------------- closed-form JKO


def test_lecture_example_is_mean_one_over_1_1_and_unit_std():
    m, s = jko_step_1d(1.0, 1.0, 0.1, 0.0, 1.0)
    assert abs(float(m) - 1 / 1.1) < 1e-15
    assert abs(float(s) - 1.0) < 1e-15      # the stationary spread stays put
    assert abs(float(m) - 0.9) > 5e-3       # so "N(0.9, 1)" is a rounding of 0.90909...


def _numerical_jko_1d(m_k, s_k, tau, mu, sigma):
    """Minimise KL(N(m, s^2) || N(mu, sigma^2)) + ((m - m_k)^2 + (s - s_k)^2) / (2 tau) over
    (m, log s), written out independently of the library, gradient by autograd."""
    def fun(p):
        t = torch.tensor(p, dtype=F64, requires_grad=True)
        m, s = t[0], t[1].exp()
        kl = torch.log(sigma / s) + (s**2 + (m - mu) ** 2) / (2 * sigma**2) - 0.5
        w2sq = (m - m_k) ** 2 + (s - s_k) ** 2
        val = kl + w2sq / (2 * tau)
        (grad,) = torch.autograd.grad(val, t)
        return float(val.detach()), grad.numpy()

    res = minimize(fun, np.array([m_k, math.log(s_k)]), jac=True, method="BFGS",
                   options={"gtol": 1e-13, "maxiter": 10_000})
    return res.x[0], math.exp(res.x[1])


@pytest.mark.parametrize("case", range(8))
def test_closed_form_step_equals_numerical_minimisation_1d(case):
    g = torch.Generator().manual_seed(100 + case)
    m_k, mu = (4 * torch.rand(2, generator=g, dtype=F64) - 2).tolist()
    s_k, sigma = (0.2 + 2 * torch.rand(2, generator=g, dtype=F64)).tolist()
    tau = float(10 ** (-2 + 2.5 * torch.rand((), generator=g, dtype=F64)))
    m_num, s_num = _numerical_jko_1d(m_k, s_k, tau, mu, sigma)
    m_cf, s_cf = jko_step_1d(m_k, s_k, tau, mu, sigma)
    assert abs(float(m_cf) - m_num) < 1e-6
    assert abs(float(s_cf) - s_num) < 1e-6


def test_closed_form_step_equals_numerical_minimisation_full_covariance():
    """Commuting but non-diagonal covariances; the search runs over all 2-D Gaussians (mean and
    a Cholesky factor), so it could find a non-commuting minimiser if there were one."""
    g = torch.Generator().manual_seed(7)
    q = _rotation(0.6)
    target_cov = q @ torch.diag(torch.tensor([1.5, 0.4], dtype=F64)) @ q.T
    cov_k = q @ torch.diag(torch.tensor([0.3, 2.0], dtype=F64)) @ q.T
    m_k = torch.tensor([1.0, -0.5], dtype=F64)
    mu = torch.randn(2, generator=g, dtype=F64)
    tau = 0.3

    def fun(p):
        t = torch.tensor(p, dtype=F64, requires_grad=True)
        low = torch.stack([torch.stack([t[2].exp(), torch.zeros((), dtype=F64)]),
                           torch.stack([t[3], t[4].exp()])])
        cov = low @ low.T
        w2sq = w2_gaussian(t[:2], cov, m_k, cov_k) ** 2
        val = kl_gaussian(t[:2], cov, mu, target_cov) + w2sq / (2 * tau)
        (grad,) = torch.autograd.grad(val, t)
        return float(val.detach()), grad.numpy()

    res = minimize(fun, np.array([0.2, 0.1, -0.2, 0.3, 0.1]), jac=True, method="BFGS",
                   options={"gtol": 1e-12, "maxiter": 10_000})
    low = np.array([[math.exp(res.x[2]), 0.0], [res.x[3], math.exp(res.x[4])]])
    mean_cf, cov_cf = gaussian_jko_step(m_k, cov_k, tau, mu, target_cov)
    assert np.abs(res.x[:2] - mean_cf.numpy()).max() < 1e-6
    assert np.abs(low @ low.T - cov_cf.numpy()).max() < 1e-6


def test_diagonal_step_is_the_1d_step_per_coordinate():
    mean, cov = gaussian_jko_step([1.0, -2.0], torch.diag(torch.tensor([0.5, 3.0])), 0.2,
                                  [0.5, 0.0], torch.diag(torch.tensor([2.0, 0.7])))
    m1, s1 = jko_step_1d(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0]).sqrt(), 0.2,
                         torch.tensor([0.5, 0.0]), torch.tensor([2.0, 0.7]).sqrt())
    assert torch.allclose(mean, m1, atol=1e-14)
    assert torch.allclose(cov, torch.diag(s1**2), atol=1e-14)


def _w2_error_at(tau: float, total_time: float, m0, cov0, mu, sig) -> float:
    steps = round(total_time / tau)
    means, covs = gaussian_jko_path(m0, cov0, tau, steps, mu, sig)
    m_ex, c_ex = ou_solution(m0, cov0, total_time, mu, sig)
    return float(w2_gaussian(means[-1], covs[-1], m_ex, c_ex))


def test_jko_is_first_order_globally_and_second_order_locally():
    m0, cov0 = [1.0, -1.0], torch.diag(torch.tensor([0.25, 2.0], dtype=F64))
    mu, sig = [0.0, 0.0], torch.diag(torch.tensor([1.0, 0.5], dtype=F64))
    glob = [_w2_error_at(t, 1.0, m0, cov0, mu, sig) for t in (0.1, 0.05, 0.025)]
    # the local error's leading term dominates only for small tau (tau / min variance << 1)
    loc = [_w2_error_at(t, t, m0, cov0, mu, sig) for t in (0.004, 0.002, 0.001)]
    order_global = math.log(glob[-2] / glob[-1], 2)
    order_local = math.log(loc[-2] / loc[-1], 2)
    assert 0.9 < order_global < 1.1
    assert 1.8 < order_local < 2.2


# --------------------------------------------------------------------------- OU, W2, KL


@pytest.mark.parametrize("t", [0.0, 0.1, 0.7, 2.5])
def test_ou_solution_satisfies_its_odes(t):
    g = torch.Generator().manual_seed(3)
    sig, cov0 = _random_spd(g), _random_spd(g)          # generic: they do not commute
    mu, m0 = torch.randn(2, generator=g, dtype=F64), torch.randn(2, generator=g, dtype=F64)
    tt = torch.tensor(t, dtype=F64, requires_grad=True)
    mean, cov = ou_solution(m0, cov0, tt, mu, sig)
    dmean = torch.stack([torch.autograd.grad(mean[i], tt, retain_graph=True)[0] for i in range(2)])
    dcov = torch.stack([torch.stack([torch.autograd.grad(cov[i, j], tt, retain_graph=True)[0]
                                     for j in range(2)]) for i in range(2)])
    prec = torch.linalg.inv(sig)
    mean, cov = mean.detach(), cov.detach()
    assert torch.allclose(dmean, -prec @ (mean - mu), atol=1e-10)
    assert torch.allclose(dcov, -prec @ cov - cov @ prec + 2 * torch.eye(2, dtype=F64), atol=1e-9)
    if t == 0.0:
        assert torch.allclose(mean, m0) and torch.allclose(cov, cov0)


def test_ou_tends_to_the_target_and_1d_matches_the_matrix_form():
    mean, cov = ou_solution([3.0], [[0.1]], 60.0, [-1.0], [[2.0]])
    assert abs(float(mean[0]) + 1) < 1e-9 and abs(float(cov[0, 0]) - 2) < 1e-9
    m, s = ou_1d(3.0, 0.1**0.5, 0.8, -1.0, 2.0**0.5)
    mean, cov = ou_solution([3.0], [[0.1]], 0.8, [-1.0], [[2.0]])
    assert abs(float(m) - float(mean[0])) < 1e-12 and abs(float(s) ** 2 - float(cov[0, 0])) < 1e-12


def test_w2_gaussian_equals_the_cost_of_a_linear_optimal_map():
    """x -> A x with A symmetric positive definite is the gradient of a convex function, hence
    optimal: W2^2(N(0, S), N(0, A S A)) = E|A x - x|^2 = tr((A - I) S (A - I))."""
    g = torch.Generator().manual_seed(11)
    for _ in range(5):
        s, a = _random_spd(g, 3), _random_spd(g, 3)
        shift = torch.randn(3, generator=g, dtype=F64)
        eye = torch.eye(3, dtype=F64)
        expected = torch.trace((a - eye) @ s @ (a - eye)) + shift @ shift
        got = w2_gaussian(torch.zeros(3), s, shift, a @ s @ a) ** 2
        assert abs(float(got) - float(expected)) < 1e-9


def test_kl_gaussian_of_identical_is_zero_and_1d_formula():
    assert abs(float(kl_gaussian([0.3], [[2.0]], [0.3], [[2.0]]))) < 1e-14
    kl = float(kl_gaussian([1.0], [[0.25]], [0.0], [[1.0]]))
    assert abs(kl - (math.log(1 / 0.5) + (0.25 + 1) / 2 - 0.5)) < 1e-14


# --------------------------------------------------------------------------- flow-based JKO


def test_affine_flow_jko_follows_the_closed_form_from_the_sample_moments():
    """With an elementwise affine map and a diagonal Gaussian target, the sample mean and std
    of the particles obey exactly the closed-form recursion started from the initial sample's
    moments (the empirical objective is the Gaussian one in those moments)."""
    target_var = torch.tensor([1.0, 0.5], dtype=F64)
    target = gaussian_target([0.5, 0.0], torch.diag(target_var))
    initial = gaussian_start([2.0, -1.0], [0.5, 1.5], dtype=F64)
    config = JKOConfig(tau=0.2, iterations=100, lr=1.0, optimizer="lbfgs")
    run = flow_jko(initial, target, config, 4, lambda: affine_map(2), particles=500,
                   eval_particles=50, generator=torch.Generator().manual_seed(0))
    x0 = initial.sample_and_log_prob(500, generator=torch.Generator().manual_seed(0))[0]
    m, s = x0.mean(0), x0.std(0, unbiased=False)
    for _ in range(4):
        m, s = jko_step_1d(m, s, 0.2, torch.tensor([0.5, 0.0]), target_var.sqrt())
    x = run.particles.x
    assert torch.allclose(x.mean(0), m, atol=1e-7)
    assert torch.allclose(x.std(0, unbiased=False), s, atol=1e-7)


def test_free_energy_decreases_every_step_on_a_banana():
    target = banana_target(0.5, 0.5)
    config = JKOConfig(tau=0.1, iterations=15, lr=1.0, optimizer="lbfgs")
    run = flow_jko(gaussian_start([2.0, -1.0], [0.5, 0.5]), target, config, 5,
                   lambda: coupling_map(2, 2, 16), particles=400, eval_particles=400,
                   generator=torch.Generator().manual_seed(1))
    for series in (run.free_energy_fit, run.free_energy_eval):
        assert all(b < a for a, b in zip(series, series[1:])), series
    for fit in run.fits:  # the JKO energy inequality on the fitting particles
        assert fit.objective < fit.objective_identity
    # the carried log-densities are those of the composed flow
    model = run.model()
    with torch.no_grad():
        assert torch.allclose(model.log_prob(run.eval_particles.x), run.eval_particles.log_p,
                              atol=1e-4)


def test_adam_steps_go_through_the_engine_and_decrease_the_free_energy():
    from nfcourse.jko import JKOStepObjective, fit_jko_map
    from nfcourse.jko.solver import jko_objective

    target = banana_target(0.5, 0.5)
    x = gaussian_start([2.0, -1.0], [0.5, 0.5]).sample(300, torch.Generator().manual_seed(3))
    config = JKOConfig(tau=0.1, iterations=60, lr=1e-2, optimizer="adam")
    torch.manual_seed(0)
    step = fit_jko_map(coupling_map(2, 2, 16), x, target, config)
    assert step.objective < step.objective_identity - 0.05   # the energy inequality, with room
    # the engine reports the step's objective on the fitting particles as its held-out loss
    flow = coupling_map(2, 2, 16)
    objective = JKOStepObjective(flow, target, config.tau)
    with torch.no_grad():
        direct = float(jko_objective(flow, x, target, config.tau)[0])
    assert objective.evaluate(x) == pytest.approx(direct)


# --------------------------------------------------------------------------- Langevin


def test_ula_moments_follow_their_exact_recursion():
    sigma2, h, steps, n = 0.5, 0.05, 40, 20_000
    target = gaussian_target([0.0], [[sigma2]])
    x0 = 2.0 + 0.3 * torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    run = langevin(target, x0, h, steps, generator=torch.Generator().manual_seed(1))
    a = 1 - h / sigma2
    mean, var = float(x0.mean()), float(x0.var())
    for _ in range(steps):
        mean, var = a * mean, a * a * var + 2 * h
    x = run.x[:, 0]
    assert abs(float(x.mean()) - mean) < 5 * math.sqrt(var / n)
    assert abs(float(x.var()) - var) < 5 * var * math.sqrt(2 / n)


def test_mala_removes_the_ula_bias_at_a_large_step():
    sigma2, h, n = 1.0, 0.8, 20_000
    target = gaussian_target([0.0], [[sigma2]])
    x0 = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    ula = langevin(target, x0, h, 60, generator=torch.Generator().manual_seed(1))
    mala = langevin(target, x0, h, 60, generator=torch.Generator().manual_seed(1), mala=True)
    se = sigma2 * math.sqrt(2 / n)
    assert abs(float(mala.x.var()) - sigma2) < 5 * se
    assert abs(float(ula.x.var()) - sigma2 / (1 - h / (2 * sigma2))) < 10 * se
    assert 0.3 < mala.acceptance < 1.0


def test_w2_of_a_translation_is_its_length():
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    shift = torch.tensor([0.3, -0.4], dtype=F64)
    assert abs(w2(x, x + shift) - 0.5) < 1e-9
    assert w2(x, x[torch.randperm(300)]) < 1e-6  # sqrt of round-off


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, match", [
    (lambda: jko_step_1d(1.0, 1.0, 0.0), "tau"),
    (lambda: jko_step_1d(1.0, 1.0, float("nan")), "tau"),
    (lambda: jko_step_1d(1.0, -1.0, 0.1), "standard deviations"),
    (lambda: gaussian_jko_step([0.0, 0.0], [[1.0, 2.0], [2.0, 1.0]], 0.1, [0.0, 0.0],
                               torch.eye(2)), "positive definite"),
    (lambda: gaussian_jko_step([0.0, 0.0], [[1.0, 0.5], [0.0, 1.0]], 0.1, [0.0, 0.0],
                               torch.eye(2)), "symmetric"),
    (lambda: gaussian_jko_step([0.0, 0.0], torch.eye(3), 0.1, [0.0, 0.0], torch.eye(2)),
     "shape"),
    (lambda: gaussian_jko_step([0.0, 0.0], [[1.0, 0.5], [0.5, 1.0]], 0.1, [0.0, 0.0],
                               torch.diag(torch.tensor([1.0, 2.0]))), "do not commute"),
    (lambda: ou_solution([0.0], [[1.0]], -1.0, [0.0], [[1.0]]), "t must"),
    (lambda: w2_gaussian([0.0, float("inf")], torch.eye(2), [0.0, 0.0], torch.eye(2)),
     "NaN or inf"),
    (lambda: JKOConfig(tau=-0.1), "tau"),
    (lambda: JKOConfig(tau=0.1, optimizer="sgd"), "optimizer"),
    (lambda: banana_target(width=0.0), "width"),
    (lambda: gaussian_start([0.0, 0.0], [1.0]), "same length"),
    (lambda: flow_jko(gaussian_start([0.0], [1.0]), banana_target(), JKOConfig(tau=0.1), 1,
                      lambda: affine_map(1)), "2-dimensional"),
    (lambda: langevin(banana_target(), torch.zeros(4, 3), 0.01, 5), "shape"),
    (lambda: langevin(banana_target(), torch.zeros(4, 2), 0.0, 5), "step_size"),
    (lambda: Target("no sampler", 1, lambda x: x[:, 0] ** 2, 0.0).sample(3), "exact sampler"),
    (lambda: w2(torch.zeros(3, 2), torch.zeros(3, 3)), "dimensions differ"),
    (lambda: gaussian_jko_path([0.0], [[1.0]], 0.1, -1, [0.0], [[1.0]]), "steps"),
    (lambda: flow_jko(gaussian_start([0.0, 0.0], [1.0, 1.0]), banana_target(),
                      JKOConfig(tau=0.1), 1, lambda: torch.nn.Linear(2, 2)), "must return a Flow"),
    (lambda: flow_jko(gaussian_start([0.0, 0.0], [1.0, 1.0]), banana_target(),
                      JKOConfig(tau=0.1), 0, lambda: affine_map(2)).model(3), "does not exist"),
])
def test_bad_input_raises_a_useful_error(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
