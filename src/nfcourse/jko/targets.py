"""Target densities ``pi(x) = exp(-U(x)) / Z`` for the JKO chapter, with exact samplers.

A :class:`Target` bundles the potential ``U: [B, D] -> [B]``, ``log Z`` (so that free energies
``KL(p || pi) = E_p[log p + U] + log Z`` are absolute, not just up to a constant) and, where
one exists, an exact sampler used only as ground truth in comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from nfcourse.jko.gaussian import check_mean_cov
from nfcourse.core.validation import check_tensor


@dataclass(frozen=True)
class Target:
    """``pi(x) = exp(-potential(x) - log_z)`` on ``R^dim``.

    Attributes:
        name: for plots and messages.
        dim: event dimension ``D``.
        potential: ``U``, ``[B, D] -> [B]``; differentiable (Langevin and the JKO solver use
            its autograd gradient).
        log_z: ``log`` of the normalising constant of ``exp(-U)``.
        sampler: ``(n, generator) -> [n, D]`` exact samples, or ``None``.
    """

    name: str
    dim: int
    potential: Callable[[Tensor], Tensor]
    log_z: float
    sampler: Callable[[int, torch.Generator], Tensor] | None = None

    def energy(self, x: Tensor) -> Tensor:
        """``U(x)`` with the input checked: ``x [B, D] -> [B]``."""
        check_tensor(x, (self.dim,), name=f"Target({self.name}).energy(x)")
        return self.potential(x)

    def log_prob(self, x: Tensor) -> Tensor:
        """Normalised ``log pi(x)``: ``[B, D] -> [B]``."""
        return -self.energy(x) - self.log_z

    def grad_potential(self, x: Tensor) -> Tensor:
        """``grad U(x)``, ``[B, D] -> [B, D]``, by autograd (the samples are independent)."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.potential(xg).sum(), xg)
        return g

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact samples ``[n, D]``; raises if the target has no exact sampler."""
        if self.sampler is None:
            raise ValueError(f"Target {self.name!r} has no exact sampler; use Langevin "
                             "(nfcourse.jko.langevin) to draw approximate samples.")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"number of samples must be a positive int, got {n!r}.")
        return self.sampler(n, generator or torch.Generator().manual_seed(0))


def gaussian_target(mean: object, cov: object) -> Target:
    """``N(mean, cov)``: ``U(x) = (x - mean)^T cov^-1 (x - mean) / 2``,
    ``log Z = (D log 2 pi + log det cov) / 2``. The OU process is its Langevin dynamics."""
    m, c = check_mean_cov(mean, cov, "target")
    d = m.shape[0]
    prec = torch.linalg.inv(c)
    chol = torch.linalg.cholesky(c)

    def potential(x: Tensor) -> Tensor:
        diff = x - m.to(x.dtype)
        return 0.5 * ((diff @ prec.to(x.dtype)) * diff).sum(dim=1)

    def sampler(n: int, g: torch.Generator) -> Tensor:
        return m + torch.randn(n, d, generator=g, dtype=torch.float64) @ chol.T

    log_z = 0.5 * (d * math.log(2 * math.pi) + float(torch.logdet(c)))
    return Target(f"N(mean, cov) in {d}-D", d, potential, log_z, sampler)


def banana_target(curvature: float = 1.0, width: float = 0.5, scale: float = 1.0) -> Target:
    """A 2-D banana: ``x1 ~ N(0, scale^2)``, ``x2 | x1 ~ N(curvature (x1^2 - scale^2), width^2)``.

    Defined by its sampling process, so it is normalised exactly:
    ``U(x) = x1^2 / (2 scale^2) + (x2 - curvature (x1^2 - scale^2))^2 / (2 width^2)`` and
    ``log Z = log(2 pi scale width)``. ``E[x2] = 0``; the narrow, bent ridge is what makes it
    non-Gaussian (and stiff for Langevin when ``width`` is small).
    """
    for name, v in (("width", width), ("scale", scale)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"banana_target: {name} must be > 0, got {v}.")
    if not math.isfinite(curvature):
        raise ValueError(f"banana_target: curvature must be finite, got {curvature}.")

    def potential(x: Tensor) -> Tensor:
        ridge = curvature * (x[:, 0] ** 2 - scale**2)
        return 0.5 * (x[:, 0] / scale) ** 2 + 0.5 * ((x[:, 1] - ridge) / width) ** 2

    def sampler(n: int, g: torch.Generator) -> Tensor:
        e = torch.randn(n, 2, generator=g, dtype=torch.float64)
        x1 = scale * e[:, 0]
        return torch.stack([x1, curvature * (x1**2 - scale**2) + width * e[:, 1]], dim=1)

    log_z = math.log(2 * math.pi * scale * width)
    return Target(f"banana (curvature {curvature:g}, width {width:g})", 2, potential, log_z,
                  sampler)
