"""Divergence estimators: exact equals the Jacobian trace; Hutchinson is unbiased."""

import pytest
import torch

from nfcourse.metrics.stats import mean_se
from nfcourse.ode.divergence import (divergence_exact, divergence_hutchinson, hutchinson_trace,
                                     hutchinson_variance, jacobian_rows, sample_probe)


def _mlp(d, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, d)).double()


def test_exact_divergence_is_the_jacobian_trace():
    net = _mlp(3)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    div = divergence_exact(net(x), x)
    for b in range(5):
        jac = torch.autograd.functional.jacobian(lambda v: net(v[None])[0], x[b].detach())
        assert torch.allclose(div[b], torch.trace(jac), atol=1e-12)
    rows = jacobian_rows(net(x), x)
    assert torch.allclose(torch.diagonal(rows, dim1=1, dim2=2).sum(1), div, atol=1e-12)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_hutchinson_is_unbiased(kind):
    net = _mlp(4, seed=1)
    x0 = torch.randn(1, 4, dtype=torch.float64)
    n = 20_000
    x = x0.expand(n, 4).clone().requires_grad_(True)  # one point, n independent probes
    v = net(x)
    exact = divergence_exact(v, x)[0]
    g = torch.Generator().manual_seed(7)
    est, vjp = divergence_hutchinson(v, x, sample_probe((n, 4), kind, g, torch.float64))
    mean, se = mean_se(est)
    assert abs(mean - float(exact)) < 3 * se, (mean, float(exact), se)
    # the sample variance matches the closed form (relative error ~ sqrt(2/n) ~ 1%)
    x1 = x0.clone().requires_grad_(True)
    jac = jacobian_rows(net(x1), x1)[0]
    var_theory = float(hutchinson_variance(jac, kind))
    assert abs(float(est.var()) / var_theory - 1) < 0.1
    # |e^T J|^2 estimates |J|_F^2 without bias as well
    fro2 = float(jac.square().sum())
    m2, se2 = mean_se(vjp.square().sum(1))
    assert abs(m2 - fro2) < 3 * se2


def test_rademacher_is_exact_for_a_diagonal_matrix():
    # only the off-diagonal (symmetric) part contributes variance with +-1 probes
    J = torch.diag(torch.tensor([1.0, -3.0, 2.5], dtype=torch.float64))
    est = hutchinson_trace(J, 50, "rademacher", torch.Generator().manual_seed(0))
    assert torch.allclose(est, torch.full_like(est, 0.5))
    assert float(hutchinson_variance(J, "rademacher")) == 0.0
    assert float(hutchinson_variance(J, "gaussian")) > 0.0


def test_bad_input_errors():
    x = torch.randn(3, 2, requires_grad=True)
    v = x * 2
    with pytest.raises(ValueError, match="probe has shape"):
        divergence_hutchinson(v, x, torch.ones(3, 3))
    with pytest.raises(ValueError, match="does not depend on x"):
        divergence_exact(torch.ones(3, 2), x)
    with pytest.raises(ValueError, match="same shape"):
        divergence_exact(v[:, :1], x)
    with pytest.raises(ValueError, match="unknown probe"):
        sample_probe((2, 2), "uniform")
    with pytest.raises(ValueError, match="square matrix"):
        hutchinson_trace(torch.ones(2, 3), 4)
