"""Chapter 1 helpers: closed forms and numerical checks of the change-of-variables formula."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from nfcourse.core.flow import Flow


def interval_mass_check(flow: Flow, base_cdf, a: float, b: float, n: int = 20_001
                        ) -> tuple[float, float]:
    """Probability of ``Z in [a, b]`` two ways, for an increasing 1-D flow ``x = f(z)``.

    1. directly, ``F_Z(b) - F_Z(a)`` from the base distribution's CDF;
    2. by integrating the *pushed-forward* density ``p_X(x) = p_Z(f^-1(x)) |d f^-1/dx|`` over
       ``[f(a), f(b)]`` with the trapezoidal rule on ``n`` points.

    The two agree only because of the ``|d f^-1/dx|`` factor: mass is conserved, volume is not.
    Returns ``(direct, integrated)`` in float64.
    """
    with torch.no_grad():
        f = copy.deepcopy(flow).double()  # leave the caller's flow in its dtype
        ends = torch.tensor([[a], [b]], dtype=torch.float64)
        xa, xb = f.forward(ends)[0].reshape(-1).tolist()
        xs = torch.linspace(xa, xb, n, dtype=torch.float64)[:, None]
        z, logdet = f.inverse(xs)
        log_pz = -0.5 * z[:, 0] ** 2 - 0.5 * math.log(2 * math.pi)
        density = (log_pz + logdet).exp()
        integrated = torch.trapezoid(density, xs[:, 0]).item()
    direct = float(base_cdf(b) - base_cdf(a))
    return direct, integrated


def standard_normal_cdf(t: float) -> float:
    return 0.5 * (1 + math.erf(t / math.sqrt(2)))


def rayleigh_uniform_log_prob(polar: Tensor) -> Tensor:
    """Closed form density of ``(r, theta)`` for a 2-D standard normal point.

    ``p(r, theta) = r exp(-r^2 / 2) / (2 pi)``: a Rayleigh radius times a uniform angle.
    ``polar: [B, 2] -> [B]``.
    """
    r = polar[:, 0]
    return torch.log(r) - 0.5 * r**2 - math.log(2 * math.pi)
