"""Flow matching: conditional paths, their velocities, closed-form marginals, the CFM loss."""

from __future__ import annotations

import math

import pytest
import torch

from nfcourse.book.lecture import lecture_path, lecture_path_velocity, lecture_target
from nfcourse.matching import (GaussianMixture, LinearPath, StraightPath, VPPath, cfm_loss,
                               gaussian_1d_velocity)

F64 = torch.float64
PATHS = [LinearPath(0.05), LinearPath(0.0), StraightPath(), VPPath()]


def _pairs(b: int = 64, d: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, d, generator=g, dtype=F64),
            1.5 * torch.randn(b, d, generator=g, dtype=F64) + 0.3)


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_velocity_is_time_derivative_of_path(path):
    x0, x1 = _pairs()
    t = torch.linspace(0.02, 0.98, 64, dtype=F64)
    h = 1e-6
    fd = (path.sample(x0, x1, t + h) - path.sample(x0, x1, t - h)) / (2 * h)
    torch.testing.assert_close(path.velocity(x0, x1, t), fd, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_conditional_velocity_agrees_with_pair_velocity(path):
    x0, x1 = _pairs()
    t = torch.linspace(0.0, 0.95, 64, dtype=F64)
    xt = path.sample(x0, x1, t)
    torch.testing.assert_close(path.conditional_velocity(xt, x1, t), path.velocity(x0, x1, t))


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_endpoints_noise_at_zero_data_at_one(path):
    x0, x1 = _pairs()
    torch.testing.assert_close(path.sample(x0, x1, 0.0), x0)
    smin = getattr(path, "sigma_min", 0.0)
    torch.testing.assert_close(path.sample(x0, x1, 1.0), x1 + smin * x0, atol=1e-12, rtol=0)


def test_straight_path_velocity_is_constant_and_lecture_numeric_check():
    x0, x1 = _pairs()
    p = StraightPath()
    for t in (0.0, 0.3, 1.0):
        torch.testing.assert_close(p.velocity(x0, x1, t), x1 - x0)
    # the lecture's worked numbers: x1 = (1, 0), x0 = 0, t = 1/2
    one = torch.tensor([[1.0, 0.0]], dtype=F64)
    zero = torch.zeros(1, 2, dtype=F64)
    for path in (StraightPath(), LinearPath(0.1)):
        assert path.sample(zero, one, 0.5).tolist() == [[0.5, 0.0]]
        assert path.velocity(zero, one, 0.5).tolist() == [[1.0, 0.0]]


def test_vp_path_preserves_unit_variance():
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(200_000, 1, generator=g, dtype=F64)
    x1 = torch.randn(200_000, 1, generator=g, dtype=F64)
    for t in (0.2, 0.5, 0.8):
        assert abs(float(VPPath().sample(x0, x1, t).var()) - 1) < 0.02


def test_bad_inputs_raise_clear_errors():
    x0, x1 = _pairs()
    with pytest.raises(ValueError, match="sigma_min"):
        LinearPath(1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        StraightPath().sample(x0, x1, 1.5)
    with pytest.raises(ValueError, match="same shape"):
        StraightPath().sample(x0, x1[:3], 0.5)
    with pytest.raises(ValueError, match="one time per row"):
        StraightPath().sample(x0, x1, torch.rand(5))
    with pytest.raises(ValueError, match="sigma"):
        StraightPath().conditional_velocity(x1, x1, 1.0)
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        StraightPath().velocity(x0[0], x1[0], 0.5)


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_cfm_loss_is_zero_for_the_true_conditional_field(path):
    x0, x1 = _pairs()
    t = torch.rand(64, generator=torch.Generator().manual_seed(1), dtype=F64) * 0.9

    def true_field(tt, x):  # u_t(x | x1): the exact conditional field of each row's x1
        return path.conditional_velocity(x, x1, tt)

    assert float(cfm_loss(true_field, path, x0, x1, t)) < 1e-20

    def off_field(tt, x):
        return true_field(tt, x) + 0.1

    assert abs(float(cfm_loss(off_field, path, x0, x1, t)) - 0.02) < 1e-12


# ----------------------------------------------------------------- closed-form marginals


@pytest.mark.parametrize("path", [StraightPath(), LinearPath(0.1), VPPath()], ids=repr)
def test_mixture_marginal_velocity_solves_the_continuity_equation(path):
    """d/dt p_t + div(p_t u_t) = 0, checked with finite differences in t and x."""
    mix = GaussianMixture.eight_gaussians(std=0.3)
    g = torch.Generator().manual_seed(0)
    x = 2.5 * torch.randn(300, 2, generator=g, dtype=F64)
    h = 1e-4
    for t in (0.3, 0.6, 0.85):
        p = lambda y, s: mix.marginal_log_prob(path, y, s).exp()  # noqa: E731
        dpdt = (p(x, t + h) - p(x, t - h)) / (2 * h)
        div = torch.zeros(len(x), dtype=F64)
        for i in range(2):
            e = torch.zeros(2, dtype=F64)
            e[i] = h
            flux = lambda y: p(y, t) * mix.marginal_velocity(path, y, t)[:, i]  # noqa: E731
            div += (flux(x + e) - flux(x - e)) / (2 * h)
        scale = dpdt.abs().max()
        assert float((dpdt + div).abs().max()) < 1e-5 * max(float(scale), 1.0)


def test_mixture_marginal_velocity_fails_continuity_for_a_wrong_path():
    """The check above can fail: the straight-path velocity with VP densities does not solve it."""
    mix = GaussianMixture.eight_gaussians(std=0.3)
    x = 2.5 * torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    h, t = 1e-4, 0.5
    p = lambda y, s: mix.marginal_log_prob(VPPath(), y, s).exp()  # noqa: E731
    dpdt = (p(x, t + h) - p(x, t - h)) / (2 * h)
    div = torch.zeros(len(x), dtype=F64)
    for i in range(2):
        e = torch.zeros(2, dtype=F64)
        e[i] = h
        flux = lambda y: p(y, t) * mix.marginal_velocity(StraightPath(), y, t)[:, i]  # noqa
        div += (flux(x + e) - flux(x - e)) / (2 * h)
    assert float((dpdt + div).abs().max()) > 1e-2


def test_gaussian_1d_velocity_closed_form():
    m, s = 2.0, 0.5
    x = torch.linspace(-3, 4, 50, dtype=F64)[:, None]
    for t in (0.0, 0.4, 0.9):
        st2 = (1 - t) ** 2 + t**2 * s**2
        expected = m + (t * s**2 - (1 - t)) / st2 * (x - t * m)
        torch.testing.assert_close(gaussian_1d_velocity(x, t, m, s, StraightPath()), expected)


def test_cfm_and_fm_losses_differ_by_a_constant():
    """Lipman et al., Thm 2: L_CFM(v) - L_FM(v) does not depend on v."""
    path = StraightPath()
    mix = GaussianMixture(torch.tensor([[2.0]]), 0.5)
    g = torch.Generator().manual_seed(5)
    n = 400_000
    x0 = torch.randn(n, 1, generator=g, dtype=F64)
    x1 = mix.sample(n, g).double()
    t = torch.rand(n, generator=g, dtype=F64)
    xt = path.sample(x0, x1, t)
    u_c = path.velocity(x0, x1, t)
    u_m = mix.marginal_velocity(path, xt, t)
    fields = [torch.zeros_like(xt), 0.7 * xt - 1.0, torch.sin(3 * xt) + t[:, None]]
    gaps = [((v - u_c).square().sum(1) - (v - u_m).square().sum(1)) for v in fields]
    means = [float(d.mean()) for d in gaps]
    for d in gaps[1:]:
        diff = d - gaps[0]  # common random numbers: the same draws for every field
        assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(n)
    assert min(means) > 0.1  # the constant is the conditional variance, not zero
    # it can fail: a field's *own* marginal error is not constant across fields
    own = [float((v - u_m).square().sum(1).mean()) for v in fields]
    assert max(own) - min(own) > 0.5


def test_lecture_path_defects():
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(32, 2, generator=g, dtype=F64)
    e = torch.randn(32, 2, generator=g, dtype=F64)
    assert float(lecture_path(x1, e, 1.0).abs().max()) == 0.0          # a point mass at s = 1
    s = torch.full((32,), 0.4, dtype=F64)
    h = 1e-6
    fd = (lecture_path(x1, e, s + h) - lecture_path(x1, e, s - h)) / (2 * h)
    torch.testing.assert_close(lecture_path_velocity(x1, e), fd, atol=1e-7, rtol=1e-7)
    target = lecture_target(x1, lecture_path(x1, e, s), s)
    assert float((target - fd).abs().max()) > 1.0                      # not the path's velocity


# ------------------------------------------------------------------ the joint draw of training

DRAW_PATHS = [StraightPath(), LinearPath(0.0), LinearPath(0.05), VPPath()]


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
@pytest.mark.parametrize("path", DRAW_PATHS, ids=repr)
def test_sample_and_velocity_equals_sample_then_velocity(path, dtype):
    x0, x1 = (v.to(dtype) for v in _pairs(256))
    g = torch.Generator().manual_seed(4)
    times = [torch.rand(256, generator=g, dtype=dtype), torch.tensor(0.3, dtype=dtype),
             torch.rand(256, generator=g).double().to(dtype), 0.0, 0.7, 1.0]
    tol = dict(atol=1e-6, rtol=1e-6) if dtype == torch.float32 else dict(atol=1e-13, rtol=0)
    for t in times:
        xt, ut = path.sample_and_velocity(x0, x1, t)
        assert xt.dtype == ut.dtype == dtype and xt.shape == ut.shape == x0.shape
        torch.testing.assert_close(xt, path.sample(x0, x1, t), **tol)
        torch.testing.assert_close(ut, path.velocity(x0, x1, t), **tol)


def test_sample_and_velocity_vp_and_straight_ends_are_exact():
    x0, x1 = _pairs()
    t = torch.rand(64, generator=torch.Generator().manual_seed(2), dtype=F64)
    xt, ut = VPPath().sample_and_velocity(x0, x1, t)   # same arithmetic as the two calls
    assert torch.equal(xt, VPPath().sample(x0, x1, t))
    assert torch.equal(ut, VPPath().velocity(x0, x1, t))
    for end, want in ((0.0, x0), (1.0, x1)):
        assert torch.equal(StraightPath().sample_and_velocity(x0, x1, end)[0], want)
        assert torch.equal(StraightPath().sample_and_velocity(
            x0, x1, torch.full((64,), end, dtype=F64))[0], want)


def test_sample_and_velocity_bad_inputs_raise_when_validation_is_on():
    from nfcourse.core.validation import validation
    x0, x1 = _pairs()
    p = StraightPath()
    for bad in (1.5, -0.1, float("nan"), torch.tensor([0.5] * 63 + [float("nan")], dtype=F64),
                torch.tensor([0.5] * 63 + [float("inf")], dtype=F64),
                torch.linspace(-0.2, 0.9, 64, dtype=F64)):
        with pytest.raises(ValueError, match=r"sample_and_velocity: times must lie in \[0, 1\]"):
            p.sample_and_velocity(x0, x1, bad)
    with pytest.raises(ValueError, match="same shape"):
        p.sample_and_velocity(x0, x1[:3], 0.5)
    with pytest.raises(ValueError, match="one time per row"):
        p.sample_and_velocity(x0, x1, torch.rand(5))
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        VPPath().sample_and_velocity(x0[0], x1[0], 0.5)
    with validation(False):  # values are not read; the shapes are still checked
        p.sample_and_velocity(x0, x1, 1.5)
        with pytest.raises(ValueError, match="one time per row"):
            p.sample_and_velocity(x0, x1, torch.rand(5))
    with pytest.raises(ValueError, match="times must lie"):  # cfm_loss checks through it
        cfm_loss(lambda tt, x: x, p, x0, x1, torch.full((64,), 2.0, dtype=F64))


def test_sample_and_velocity_follows_a_subclass_schedule():
    class Quadratic(LinearPath):  # redefines alpha only: the linear closed form must not apply
        def alpha(self, t):
            return t * t

        def d_alpha(self, t):
            return 2 * t

    class Shifted(StraightPath):  # redefines sample itself
        def sample(self, x0, x1, t):
            return super().sample(x0, x1, t) + 1.0

    x0, x1 = _pairs()
    t = torch.rand(64, generator=torch.Generator().manual_seed(5), dtype=F64)
    for path in (Quadratic(0.1), Shifted()):
        xt, ut = path.sample_and_velocity(x0, x1, t)
        torch.testing.assert_close(xt, path.sample(x0, x1, t))
        torch.testing.assert_close(ut, path.velocity(x0, x1, t))


def test_sample_and_velocity_is_a_few_operators():
    from nfcourse.book.bench import op_profile
    from nfcourse.core.validation import validation
    x0, x1 = (v.float() for v in _pairs(256))
    t = torch.rand(256)
    p = StraightPath()
    old = op_profile(lambda: (p.sample(x0, x1, t), p.velocity(x0, x1, t))).calls
    new = op_profile(lambda: p.sample_and_velocity(x0, x1, t)).calls
    with validation(False):
        unchecked = op_profile(lambda: p.sample_and_velocity(x0, x1, t)).calls
    assert unchecked < new < old / 4, (unchecked, new, old)


def test_cfm_loss_is_the_mean_of_row_sums():
    x0, x1 = (v.float() for v in _pairs(256))
    t = torch.rand(256, generator=torch.Generator().manual_seed(6))
    w = torch.randn(2, 2, generator=torch.Generator().manual_seed(7), requires_grad=True)

    def field(tt, x):
        return x @ w + tt[:, None]

    p = StraightPath()
    got = cfm_loss(field, p, x0, x1, t)
    (g_got,) = torch.autograd.grad(got, w)
    xt, ut = p.sample(x0, x1, t), p.velocity(x0, x1, t)
    want = (field(t, xt) - ut).square().sum(dim=1).mean()
    (g_want,) = torch.autograd.grad(want, w)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-6)
