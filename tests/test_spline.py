"""The rational-quadratic spline (Durkan et al. 2019) and the spline coupling.

The spline is checked at its knots (knots map to knots, slopes match), in its tails (the
identity, log-det 0), for its analytic inverse and log-det (against autograd, in float64), and
against zuko's implementation of the same formula on the same knots.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from nfcourse.core import Inverse
from nfcourse.core.testing import check_flow
from nfcourse.flows import Checkerboard, SplineCoupling, coupling_masks
from nfcourse.flows.spline import (RQSpline, rational_quadratic_spline, spline_knots,
                                   spline_params)

B = 3.0


def _params(shape: tuple[int, ...], bins: int, seed: int = 0, scale: float = 1.5
            ) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(scale * torch.randn(*shape, k, generator=g, dtype=torch.float64)  # type: ignore
                 for k in (bins, bins, bins - 1))


def _spline(v: Tensor, params: tuple[Tensor, Tensor, Tensor], inverse: bool = False,
            **kw: float) -> tuple[Tensor, Tensor]:
    return rational_quadratic_spline(v, *params, inverse=inverse, bound=kw.pop("bound", B), **kw)


@pytest.mark.parametrize("bins", [1, 2, 5, 16])
def test_knots_map_to_knots_with_their_slopes(bins: int) -> None:
    params = _params((4,), bins)
    xk, yk, dk = spline_knots(*params, bound=B)
    assert xk.shape == yk.shape == dk.shape == (4, bins + 1)
    assert torch.all(xk[:, 0] == -B) and torch.all(xk[:, -1] == B)
    assert torch.all(yk[:, 0] == -B) and torch.all(yk[:, -1] == B)
    assert torch.all(dk[:, 0] == 1) and torch.all(dk[:, -1] == 1)
    for k in range(bins + 1):
        x = xk[:, k].clone().requires_grad_(True)
        y, ld = _spline(x, params)
        if k < bins:  # an interior or the left end knot: exactly the knot
            assert torch.equal(y, yk[:, k])
        torch.testing.assert_close(y, yk[:, k], rtol=0, atol=1e-14)
        (slope,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(slope, dk[:, k], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ld, dk[:, k].log(), rtol=1e-12, atol=1e-12)
        # and back: knot y_k maps to x_k
        x_back, _ = _spline(yk[:, k], params, inverse=True)
        torch.testing.assert_close(x_back, xk[:, k], rtol=0, atol=1e-13)


def test_monotone_and_continuous_across_knots() -> None:
    params = _params((1,), 7, seed=3)
    x = torch.linspace(-B - 1, B + 1, 20001, dtype=torch.float64)
    y, _ = _spline(x, tuple(p.expand(len(x), -1) for p in params))  # type: ignore[arg-type]
    steps = y.diff()
    assert bool((steps > 0).all())
    assert float(steps.max()) < 50 * float(x.diff().max())  # no jump anywhere


def test_tails_are_the_identity_with_zero_logdet() -> None:
    params = _params((6,), 8, seed=1)
    x = torch.tensor([-100.0, -B - 1e-9, -3.5, B + 1e-9, 4.0, 1e6], dtype=torch.float64)
    for inverse in (False, True):
        y, ld = _spline(x, params, inverse=inverse)
        assert torch.equal(y, x)
        assert torch.equal(ld, torch.zeros_like(x))


@pytest.mark.parametrize("bins", [1, 3, 8, 32])
def test_inverse_of_forward_to_1e10_in_float64(bins: int) -> None:
    n = 4000
    g = torch.Generator().manual_seed(7)
    x = (B + 1) * (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1)
    for scale in (1.5, 4.0):
        params = _params((n,), bins, seed=bins, scale=scale)
        y, ld = _spline(x, params)
        x_back, ld_back = _spline(y, params, inverse=True)
        err = (x_back - x).abs()
        if scale == 1.5:  # slopes of a typical network output: at most 1e-10 anywhere
            assert err.max() < 1e-10
            assert (ld + ld_back).abs().max() < 1e-10
        # extreme parameters give slopes down to ~1e-7, where x is ill-determined by y: the
        # error in x is then round-off in y divided by the slope, and no larger
        assert (err * ld.exp()).max() < 1e-12
        assert (ld + ld_back).abs().max() < 1e-8
        y_again, _ = _spline(x_back, params)
        assert (y_again - y).abs().max() < 1e-10


@pytest.mark.parametrize("inverse", [False, True])
def test_logdet_matches_autograd(inverse: bool) -> None:
    n = 500
    params = _params((n,), 6, seed=11, scale=2.0)
    v = (B + 0.5) * (2 * torch.rand(n, generator=torch.Generator().manual_seed(2),
                                    dtype=torch.float64) - 1)
    v.requires_grad_(True)
    out, ld = _spline(v, params, inverse=inverse)
    (slope,) = torch.autograd.grad(out.sum(), v)  # elementwise map: the gradient is the slope
    torch.testing.assert_close(ld, slope.log(), rtol=1e-10, atol=1e-10)


def test_zero_parameters_are_the_identity() -> None:
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    zeros = tuple(torch.zeros(101, k, dtype=torch.float64) for k in (8, 8, 7))
    for inverse in (False, True):
        y, ld = _spline(x, zeros, inverse=inverse)  # type: ignore[arg-type]
        torch.testing.assert_close(y, x, rtol=0, atol=1e-14)
        torch.testing.assert_close(ld, torch.zeros_like(x), rtol=0, atol=1e-14)


def test_minimum_bins_and_slopes_are_respected() -> None:
    huge = tuple(torch.tensor([[-50.0, 50.0, -50.0, 0.0]], dtype=torch.float64)
                 for _ in range(2)) + (torch.tensor([[-80.0, 80.0, -80.0]],
                                                    dtype=torch.float64),)
    xk, yk, dk = spline_knots(*huge, bound=1.0, min_bin_width=0.01, min_bin_height=0.02,
                              min_derivative=0.05)
    assert float(xk.diff().min()) >= 2 * 0.01 - 1e-15  # a fraction of the width 2B = 2
    assert float(yk.diff().min()) >= 2 * 0.02 - 1e-15
    assert float(dk.min()) >= 0.05


@pytest.mark.parametrize("bins", [1, 4, 10])
def test_same_as_zuko_on_the_same_knots(bins: int) -> None:
    """zuko's MonotonicRQSTransform evaluates the same formula; given our knots (its
    ``horizontal``, ``vertical`` and ``derivatives``) it must give the same numbers."""
    zuko = pytest.importorskip("zuko")
    n = 3000
    params = _params((n,), bins, seed=5, scale=2.0)
    xk, yk, dk = spline_knots(*params, bound=B)
    g = torch.Generator().manual_seed(9)
    x = (B + 1) * (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1)
    t = zuko.transforms.MonotonicRQSTransform(*params, bound=B)
    t.horizontal, t.vertical, t.derivatives = xk, yk, dk
    y_z, ld_z = t.call_and_ladj(x)
    y, ld = _spline(x, params)
    torch.testing.assert_close(y, y_z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ld, ld_z, rtol=1e-12, atol=1e-12)
    # the inverse, too (to 1e-9: where the slope is ~1e-3 a round-off in y moves x 1000-fold)
    torch.testing.assert_close(_spline(y, params, inverse=True)[0], t.inv(y_z), rtol=0,
                               atol=1e-9)


@pytest.mark.parametrize("bad, message", [
    (dict(bins=0), "bins >= 1"), (dict(bins=2.5), "bins >= 1"), (dict(bound=0.0), "> 0"),
    (dict(bound=-1.0), "> 0"), (dict(bound=float("inf")), "finite"),
    (dict(min_bin_width=0.5), "lower it or use fewer bins"),
    (dict(min_derivative=1.0), "min_derivative"),
])
def test_bad_settings_are_refused_with_the_fix(bad: dict, message: str) -> None:
    kw = dict(bins=4, bound=B) | bad
    with pytest.raises(ValueError, match=message):
        RQSpline(**kw)


def test_bad_shapes_are_refused_with_the_fix() -> None:
    w, h, d = _params((5,), 4)
    x = torch.zeros(5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\[\.\.\., K - 1\]"):
        rational_quadratic_spline(x, w, h, d[:, :2], inverse=False)
    with pytest.raises(ValueError, match="Give every input its own"):
        rational_quadratic_spline(torch.zeros(4, dtype=torch.float64), w, h, d, inverse=False)
    with pytest.raises(ValueError, match="bound B must be"):
        rational_quadratic_spline(x, w, h, d, inverse=False, bound=-2.0)


# ----------------------------------------------------------------------------- the coupling


def _perturb(flow: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return flow


@pytest.mark.parametrize("features, kind", [(2, "halves"), (5, "parity"), (6, "halves")])
@pytest.mark.parametrize("bins", [1, 8])
def test_spline_coupling_passes_check_flow(features: int, kind: str, bins: int) -> None:
    for mask in coupling_masks(features, 2, kind):
        flow = _perturb(SplineCoupling(mask, bins=bins, bound=2.0, hidden=8))
        z = 1.5 * torch.randn(7, features, generator=torch.Generator().manual_seed(1))
        check_flow(flow, z)  # points inside and outside [-2, 2]
        flow.double()
        with torch.no_grad():
            x, _ = flow.forward(z.double())
        check_flow(Inverse(flow), x)
        assert flow.forward(z[:0].double())[1].shape == (0,)
        assert flow.inverse(z[:0].double())[0].shape == (0, features)


def test_spline_coupling_on_images_passes_check_flow() -> None:
    flow = _perturb(SplineCoupling(Checkerboard((2, 4, 4), 1), bins=4, bound=2.0, hidden=4))
    z = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    check_flow(flow, z)
    x, _ = flow.forward(z)
    kept = Checkerboard((2, 4, 4), 1).mask.bool().expand_as(z)
    # the kept pixels get zero parameters, the identity spline: they move by round-off only
    torch.testing.assert_close(x[kept], z[kept], rtol=0, atol=1e-6)


def test_new_spline_coupling_is_the_identity_and_keeps_the_kept_part() -> None:
    flow = SplineCoupling(torch.tensor([True, False, False]), bins=6)
    z = torch.randn(10, 3)
    x, ld = flow(z)
    torch.testing.assert_close(x, z, rtol=0, atol=1e-6)
    torch.testing.assert_close(ld, torch.zeros(10), rtol=0, atol=1e-6)
    _perturb(flow)
    x, _ = flow(z)
    assert torch.equal(x[:, 0], z[:, 0]) and not torch.allclose(x[:, 1:], z[:, 1:])


def test_spline_coupling_parameter_count() -> None:
    flow = SplineCoupling(torch.tensor([True, False]), bins=8, hidden=16, depth=1)
    assert spline_params(8) == 23
    # 1 kept input -> 16 -> 23 numbers for the 1 transformed coordinate
    assert sum(p.numel() for p in flow.parameters()) == (1 * 16 + 16) + (16 * 23 + 23)


def test_spline_coupling_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="bins >= 1"):
        SplineCoupling(torch.tensor([True, False]), bins=0)
    with pytest.raises(ValueError, match="> 0"):
        SplineCoupling(torch.tensor([True, False]), bound=0.0)
    with pytest.raises(ValueError, match="shape"):
        SplineCoupling(torch.tensor([True, False]))(torch.zeros(4, 3))
