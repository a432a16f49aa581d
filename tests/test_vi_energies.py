"""Chapter 11's targets: the potentials U1-U4, the two-mode mixture, log Z by quadrature."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate

from nfcourse.vi import (half_plane_mass, log_normalizer, rezende_energies, rezende_energy,
                         two_gaussians)
from nfcourse.vi.energies import ENVELOPE_POWER, ENVELOPE_SCALE


@pytest.mark.parametrize("name", ["U1", "U2", "U3", "U4"])
def test_potentials_shapes_finite_and_dtypes(name):
    e = rezende_energy(name)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=dtype) * 3
        u = e.energy(x)
        assert u.shape == (64,) and u.dtype == dtype
        assert bool(torch.isfinite(u).all())
    assert e.energy(torch.zeros(0, 2)).shape == (0,)
    # far out the potential is large (the density vanishes), so the normaliser is finite
    far = torch.tensor([[30.0, 0.0], [0.0, 30.0], [-30.0, -30.0]])
    assert bool((e.energy(far) > 50).all())


def test_potentials_match_the_paper_formulas_inside_the_window():
    """Written out once more from table 1 of Rezende & Mohamed (2015), plus our envelope."""
    x = torch.tensor([[0.3, -1.2], [1.5, 0.4], [-2.0, 2.5], [3.1, -2.2]], dtype=torch.float64)
    z1, z2 = x[:, 0], x[:, 1]
    w1 = torch.sin(2 * math.pi * z1 / 4)
    w2 = 3 * torch.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    w3 = 3 / (1 + torch.exp(-(z1 - 1) / 0.3))
    env = (z1 / ENVELOPE_SCALE) ** ENVELOPE_POWER
    u1 = 0.5 * ((x.norm(dim=1) - 2) / 0.4) ** 2 - torch.log(
        torch.exp(-0.5 * ((z1 - 2) / 0.6) ** 2) + torch.exp(-0.5 * ((z1 + 2) / 0.6) ** 2))
    u2 = 0.5 * ((z2 - w1) / 0.4) ** 2 + env
    u3 = -torch.log(torch.exp(-0.5 * ((z2 - w1) / 0.35) ** 2)
                    + torch.exp(-0.5 * ((z2 - w1 + w2) / 0.35) ** 2)) + env
    u4 = -torch.log(torch.exp(-0.5 * ((z2 - w1) / 0.4) ** 2)
                    + torch.exp(-0.5 * ((z2 - w1 + w3) / 0.35) ** 2)) + env
    e = rezende_energies()
    for name, ref in zip(("U1", "U2", "U3", "U4"), (u1, u2, u3, u4)):
        torch.testing.assert_close(e[name].energy(x), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["U1", "U2", "U3", "U4"])
def test_log_normalizer_is_converged_in_grid_and_box(name):
    e = rezende_energy(name)
    base = log_normalizer(e, n=801)
    finer = log_normalizer(e, n=1201)
    x0, x1, y0, y1 = e.box
    bigger = log_normalizer(e, n=1001, box=(x0 - 1, x1 + 1, y0 - 1, y1 + 1))
    assert abs(finer - base) < 1e-6
    assert abs(bigger - finer) < 1e-6


def test_log_normalizer_agrees_with_scipy_dblquad():
    e = rezende_energy("U1")

    def f(y: float, x: float) -> float:
        return math.exp(-float(e.potential(torch.tensor([[x, y]], dtype=torch.float64))))

    x0, x1, y0, y1 = e.box
    # the ring is centred on the origin: integrate one quadrant, the density is symmetric in y
    value, err = integrate.dblquad(f, x0, x1, 0.0, y1, epsabs=1e-11, epsrel=1e-10)
    assert err < 1e-8
    assert abs(log_normalizer(e) - math.log(2 * value)) < 1e-6


def test_log_normalizer_of_a_normalised_mixture_is_zero_and_masses_are_exact():
    e = two_gaussians(separation=6.0, scale=0.6, weight_left=0.3)
    assert abs(log_normalizer(e)) < 1e-9
    assert e.log_z == 0.0
    assert half_plane_mass(e) == pytest.approx(0.3, abs=1e-6)
    # mass of the half plane against the sampler
    x = e.sample(200_000, torch.Generator().manual_seed(1))
    frac = float((x[:, 0] < 0).double().mean())
    assert abs(frac - half_plane_mass(e)) < 4 * math.sqrt(0.3 * 0.7 / 200_000)
    torch.testing.assert_close(e.log_prob(x[:5]), -e.potential(x[:5]))


def test_bad_inputs_name_the_fix():
    e = rezende_energy("U1")
    with pytest.raises(ValueError, match="choose one of"):
        rezende_energy("U5")
    with pytest.raises(ValueError, match="shape"):
        e.energy(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="enlarge the box"):
        log_normalizer(e, box=(-1.0, 1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="log_z=log_normalizer"):
        e.log_prob(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="no exact sampler"):
        e.sample(3)
    with pytest.raises(ValueError, match="not a two_gaussians"):
        half_plane_mass(e)
    with pytest.raises(ValueError, match="weight_left"):
        two_gaussians(weight_left=1.0)
    with pytest.raises(TypeError, match="int"):
        log_normalizer(e, n=100.0)
