"""Flow matching: couplings, sampling, exact likelihood, reflow, metrics, training."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from nfcourse.matching import (StraightPath, density_model, gaussian_1d_velocity,
                               independent_coupling, integrate, ot_assignment, ot_coupling, pair,
                               reflow_pairs, sample, solver, train_cfm, trajectory, transport_cost)
from nfcourse.metrics.distances import endpoint_error, mmd2, straightness, w2
from nfcourse.nn import VelocityMLP

F64 = torch.float64


class Const(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = torch.as_tensor(c, dtype=torch.float32)

    def forward(self, t, x):
        return self.c.to(x.dtype) + 0.0 * x   # keeps x in the autograd graph


class Scale(nn.Module):  # v = a x: x(1) = e^a x(0)
    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward(self, t, x):
        return self.a * x


# ----------------------------------------------------------------------------- couplings


@pytest.mark.parametrize("seed", range(5))
def test_ot_coupling_equals_brute_force_assignment(seed):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(6, 2, generator=g)
    x1 = torch.randn(6, 2, generator=g) + 1.0
    cost = torch.cdist(x0.double(), x1.double()).square()
    best = min(itertools.permutations(range(6)),
               key=lambda p: float(cost[torch.arange(6), torch.tensor(p)].sum()))
    assert ot_assignment(x0, x1).tolist() == list(best)
    a, b = ot_coupling(x0, x1)
    assert torch.equal(a, x0) and torch.equal(b, x1[list(best)])


def test_ot_coupling_never_costs_more_than_independent():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(128, 2, generator=g), torch.randn(128, 2, generator=g) * 2 + 1
    assert transport_cost(*ot_coupling(x0, x1)) < 0.8 * transport_cost(
        *independent_coupling(x0, x1))


def test_coupling_errors():
    with pytest.raises(ValueError, match="same shape"):
        ot_coupling(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="unknown coupling"):
        pair(torch.zeros(3, 2), torch.zeros(3, 2), "sinkhorn")


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("spec", [solver(1), solver(7), solver(3, "rk4"), solver(None)],
                         ids=lambda s: s.describe())
def test_constant_field_integrates_exactly(spec):
    c = torch.tensor([0.7, -1.3])
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(integrate(Const(c), z, spec), z + c, atol=1e-6, rtol=0)


def test_euler_is_not_exact_on_a_curved_field():
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    err = endpoint_error(integrate(Scale(1.0), z, solver(10)), math.e * z)
    assert err > 0.05


def test_trajectory_matches_integrate_and_straightness():
    z = torch.randn(40, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    traj = trajectory(Scale(0.5), z, 8, "heun")
    assert traj.shape == (9, 40, 2)
    torch.testing.assert_close(traj[-1], integrate(Scale(0.5), z, solver(8, "heun")))
    assert straightness(trajectory(Const([1.0, 2.0]), z, 8)) < 1e-20
    assert straightness(traj) > 1e-3   # exponential paths speed up: not straight


def test_density_model_exact_log_prob():
    a = 0.4
    m = density_model(Scale(a), 2, solver(None, rtol=1e-8, atol=1e-8)).double()
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    z = x * math.exp(-a)
    expected = -0.5 * z.square().sum(1) - math.log(2 * math.pi) - 2 * a
    torch.testing.assert_close(m.log_prob(x), expected, atol=1e-6, rtol=0)
    m2 = density_model(Const([1.0, -2.0]), 2, solver(5))
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(1))
    z = x - torch.tensor([1.0, -2.0])
    torch.testing.assert_close(m2.log_prob(x), -0.5 * z.square().sum(1) - math.log(2 * math.pi))


def test_reflow_pairs_are_noise_and_model_sample():
    field = Scale(0.3)
    z, x = reflow_pairs(field, 500, 2, solver(None), torch.Generator().manual_seed(4))
    torch.testing.assert_close(z, torch.randn(500, 2, generator=torch.Generator().manual_seed(4)))
    torch.testing.assert_close(x, z * math.exp(0.3), atol=1e-4, rtol=1e-4)
    assert abs(float(z.std()) - 1) < 0.05


def test_fixed_pairs_keep_their_partners():
    z = torch.randn(100, 2)
    x = z * 3 + 1
    seen = []

    def spy(a, b, t):
        seen.append((a, b))
        return (a.sum() * 0 + (b - 3 * a - 1).square().sum()) * torch.ones((), requires_grad=True)

    train_cfm(VelocityMLP(2, 8, 1), StraightPath(), (z, x), steps=3, batch_size=16,
              batch_loss=spy, ema=None)
    for a, b in seen:
        torch.testing.assert_close(b, 3 * a + 1)
    with pytest.raises(ValueError, match="already coupled"):
        train_cfm(VelocityMLP(2, 8, 1), StraightPath(), (z, x), coupling="ot", steps=1)


def test_sample_shape_and_errors():
    assert sample(Const([0.0, 0.0]), 10, 2, solver(2)).shape == (10, 2)
    with pytest.raises(ValueError, match="positive int"):
        sample(Const([0.0, 0.0]), 0)
    with pytest.raises(ValueError, match="NaN"):
        integrate(Const([0.0, 0.0]), torch.tensor([[float("nan"), 0.0]]))


def test_velocity_mlp_time_forms_agree():
    f = VelocityMLP(2, 16, 2)
    x = torch.randn(5, 2)
    a = f(0.3, x)
    torch.testing.assert_close(f(torch.tensor(0.3), x), a)
    torch.testing.assert_close(f(torch.full((5,), 0.3), x), a)
    with pytest.raises(ValueError, match=r"\[B\]"):
        f(torch.rand(4), x)


# ----------------------------------------------------------------------------- metrics


def test_metrics_distinguish_equal_and_shifted_samples():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(600, 2, generator=g), torch.randn(600, 2, generator=g)
    assert abs(mmd2(x, y)) < 0.01
    assert mmd2(x, y + 1.0) > 0.1
    shift = torch.tensor([0.3, -0.4])
    assert abs(w2(x, x + shift) - 0.5) < 1e-6    # a translation is transported rigidly
    assert w2(x, y) < w2(x, y + 1.0)
    with pytest.raises(ValueError, match="NaN"):
        mmd2(torch.tensor([[float("nan"), 0.0], [0.0, 0.0]]), y)


# ----------------------------------------------------------------------------- training


def test_cfm_learns_the_1d_marginal_velocity():
    torch.manual_seed(0)
    f = VelocityMLP(1, 32, 2)
    g = torch.Generator().manual_seed(0)
    path = StraightPath()
    hist = train_cfm(f, path, lambda n, gen: 2.0 + 0.5 * torch.randn(n, 1, generator=gen),
                     steps=600, batch_size=256, lr=5e-3, seed=0)
    assert len(hist.train_loss) == 600 and hist.wall_time > 0 and hist.finished
    errs = []
    for t in (0.2, 0.5, 0.8):   # compare where p_t has its mass: on draws of x_t
        x = path.sample(torch.randn(2000, 1, generator=g),
                        2.0 + 0.5 * torch.randn(2000, 1, generator=g), t)
        with torch.no_grad():
            v = f(t, x)
        exact = gaussian_1d_velocity(x, t, 2.0, 0.5, path).float()
        errs.append(float((v - exact).square().mean().sqrt()))
    assert max(errs) < 0.15, errs
    # a field trained on different data is far off: the check can fail
    exact_wrong = gaussian_1d_velocity(x, 0.5, -1.0, 0.5, path).float()
    with torch.no_grad():
        assert float((f(0.5, x) - exact_wrong).square().mean().sqrt()) > 1.0


def test_train_cfm_validates():
    with pytest.raises(ValueError, match="unknown coupling"):
        train_cfm(VelocityMLP(2), StraightPath(), lambda n, g: torch.zeros(n, 2),
                  coupling="exact")
    with pytest.raises(ValueError, match="ema"):
        train_cfm(VelocityMLP(2), StraightPath(), lambda n, g: torch.zeros(n, 2), ema=1.5)
