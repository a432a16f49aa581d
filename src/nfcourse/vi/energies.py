"""Unnormalised 2-D targets ``p(x) = exp(-U(x)) / Z`` for variational inference (chapter 11).

* :func:`rezende_energies` -- the four potentials ``U1``-``U4`` of Rezende & Mohamed (2015,
  table 1): a ring with two lobes and three sinusoidal bands. ``U2`` depends on ``x1`` only
  through ``sin(pi x1 / 2)``; ``U3`` and ``U4`` add ``w2`` and ``w3``, which are not periodic
  but tend to constants as ``|x1|`` grows (``w2 -> 0``; ``w3 -> 0`` or ``3``). So for all three
  ``exp(-U)`` does not decay along ``x1`` and has infinite mass; we multiply them by a smooth, flat-topped envelope ``exp(-(x1 / 4)^8)`` (a soft wall
  just outside the paper's plotting window ``[-4, 4]``), which makes ``Z`` finite and leaves
  the picture inside the window nearly unchanged. ``U1`` is used as published.
* :func:`two_gaussians` -- a mixture of two well separated Gaussians with known weights, for
  mode covering (forward KL) versus mode seeking (reverse KL); its ``log Z``, its exact
  samples and the exact mass of each half-plane are closed forms.
* :func:`log_normalizer` -- ``log Z = log \\int exp(-U)`` by the trapezoidal rule on a fine
  grid over a box that holds all but a negligible part of the mass (float64, log-sum-exp).
  For smooth integrands that decay like Gaussians the rule converges faster than any power of
  the spacing; the tests refine grid and box and compare with SciPy's adaptive ``dblquad``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from nfcourse.core.validation import check_count, check_tensor

Box = tuple[float, float, float, float]

__all__ = ["Energy", "rezende_energies", "rezende_energy", "two_gaussians", "log_normalizer",
           "half_plane_mass", "ENVELOPE_POWER", "ENVELOPE_SCALE"]

#: The soft wall of U2-U4: ``U + (x1 / ENVELOPE_SCALE) ** ENVELOPE_POWER``.
ENVELOPE_SCALE = 4.0
ENVELOPE_POWER = 8


@dataclass(frozen=True)
class Energy:
    """A target ``p(x) = exp(-potential(x) - log_z)`` on ``R^dim``.

    Attributes:
        name: for plots and messages ("U1").
        dim: event dimension.
        potential: ``U: [B, dim] -> [B]``, differentiable.
        box: ``(xmin, xmax, ymin, ymax)`` holding all but a negligible part of the mass: the
            quadrature box of :func:`log_normalizer` and a sensible plotting window.
        plot_box: the window to draw (defaults to ``box``).
        log_z: ``log Z`` when known in closed form (else ``None``; compute it with
            :func:`log_normalizer`).
        sampler: ``(n, generator) -> [n, dim]`` exact samples, or ``None``.
        modes: for a mixture of isotropic Gaussians (:func:`two_gaussians`), each component's
            ``(x1 of its centre, weight)``; ``mode_scale`` their common standard deviation.
    """

    name: str
    dim: int
    potential: Callable[[Tensor], Tensor]
    box: Box
    plot_box: Box | None = None
    log_z: float | None = None
    sampler: Callable[[int, torch.Generator], Tensor] | None = None
    modes: tuple[tuple[float, float], ...] | None = None
    mode_scale: float | None = None

    def energy(self, x: Tensor) -> Tensor:
        """``U(x)``: ``[B, dim] -> [B]``, input checked."""
        check_tensor(x, (self.dim,), name=f"Energy({self.name}).energy(x)")
        return self.potential(x)

    def unnormalized_log_prob(self, x: Tensor) -> Tensor:
        """``-U(x)``: ``[B, dim] -> [B]``."""
        return -self.energy(x)

    def log_prob(self, x: Tensor, log_z: float | None = None) -> Tensor:
        """Normalised ``log p(x) = -U(x) - log Z``; ``log_z`` overrides the closed form (pass
        the quadrature value for a target without one)."""
        lz = self.log_z if log_z is None else log_z
        if lz is None:
            raise ValueError(f"Energy({self.name}).log_prob: log Z is not known in closed "
                             "form; pass log_z=log_normalizer(energy).")
        return -self.energy(x) - lz

    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> Tensor:
        """``n`` exact samples ``[n, dim]`` in ``dtype`` (float32, as the models train by
        default); only for targets with a sampler. ``target.sample`` is a sampler for
        :func:`~nfcourse.training.engine.fit` (forward KL = maximum likelihood)."""
        n = check_count(n, f"Energy({self.name}).sample(n)")
        if self.sampler is None:
            raise ValueError(f"Energy {self.name!r} has no exact sampler: fit it by reverse KL "
                             "(nfcourse.vi.ReverseKL) or sample it by MCMC (nfcourse.vi.hmc).")
        return self.sampler(n, generator or torch.Generator().manual_seed(0)).to(dtype)

    @property
    def window(self) -> Box:
        return self.plot_box if self.plot_box is not None else self.box


def _w1(x: Tensor) -> Tensor:
    return torch.sin(0.5 * math.pi * x[:, 0])


def _w2(x: Tensor) -> Tensor:
    return 3.0 * torch.exp(-0.5 * ((x[:, 0] - 1.0) / 0.6) ** 2)


def _w3(x: Tensor) -> Tensor:
    return 3.0 * torch.sigmoid((x[:, 0] - 1.0) / 0.3)


def _neg_logaddexp(a: Tensor, b: Tensor) -> Tensor:
    """``-log(exp(-a) + exp(-b))`` without overflow."""
    return -torch.logaddexp(-a, -b)


def _envelope(x: Tensor) -> Tensor:
    return (x[:, 0] / ENVELOPE_SCALE) ** ENVELOPE_POWER


def _u1(x: Tensor) -> Tensor:
    ring = 0.5 * ((x.norm(dim=1) - 2.0) / 0.4) ** 2
    lobes = _neg_logaddexp(0.5 * ((x[:, 0] - 2.0) / 0.6) ** 2,
                           0.5 * ((x[:, 0] + 2.0) / 0.6) ** 2)
    return ring + lobes


def _u2(x: Tensor) -> Tensor:
    return 0.5 * ((x[:, 1] - _w1(x)) / 0.4) ** 2 + _envelope(x)


def _u3(x: Tensor) -> Tensor:
    d = x[:, 1] - _w1(x)
    return _neg_logaddexp(0.5 * (d / 0.35) ** 2, 0.5 * ((d + _w2(x)) / 0.35) ** 2) + _envelope(x)


def _u4(x: Tensor) -> Tensor:
    d = x[:, 1] - _w1(x)
    return _neg_logaddexp(0.5 * (d / 0.4) ** 2, 0.5 * ((d + _w3(x)) / 0.35) ** 2) + _envelope(x)


_REZENDE: dict[str, tuple[Callable[[Tensor], Tensor], Box]] = {
    # quadrature boxes: every one leaves out mass below exp(-30) of the total
    "U1": (_u1, (-5.5, 5.5, -5.5, 5.5)),
    "U2": (_u2, (-7.5, 7.5, -4.5, 4.5)),
    "U3": (_u3, (-7.5, 7.5, -7.5, 4.5)),
    "U4": (_u4, (-7.5, 7.5, -7.5, 4.5)),
}
PLOT_BOX: Box = (-4.0, 4.0, -4.0, 4.0)


def rezende_energy(name: str) -> Energy:
    """One of ``"U1"``, ``"U2"``, ``"U3"``, ``"U4"`` (see the module docstring)."""
    if name not in _REZENDE:
        raise ValueError(f"rezende_energy: unknown potential {name!r}; choose one of "
                         f"{', '.join(_REZENDE)}.")
    potential, box = _REZENDE[name]
    return Energy(name, 2, potential, box, PLOT_BOX)


def rezende_energies() -> dict[str, Energy]:
    """The four potentials of Rezende & Mohamed (2015), keyed ``"U1"``..``"U4"``."""
    return {name: rezende_energy(name) for name in _REZENDE}


def two_gaussians(separation: float = 6.0, scale: float = 0.6,
                  weight_left: float = 0.3) -> Energy:
    """``w N((-s/2, 0), scale^2 I) + (1 - w) N((s/2, 0), scale^2 I)`` in 2-D, ``s`` the
    separation and ``w = weight_left``.

    Its ``potential`` is the exact negative log-density, so ``log_z = 0``; each mode's mass is
    its weight, and :func:`half_plane_mass` gives the exact mass left of any vertical line.
    """
    if not (math.isfinite(separation) and separation > 0 and math.isfinite(scale) and scale > 0):
        raise ValueError(f"two_gaussians: separation and scale must be > 0, got {separation} "
                         f"and {scale}.")
    if not 0 < weight_left < 1:
        raise ValueError(f"two_gaussians: weight_left must be in (0, 1), got {weight_left}.")
    half = separation / 2
    log_w = (math.log(weight_left), math.log1p(-weight_left))
    norm = -math.log(2 * math.pi * scale**2)

    def potential(x: Tensor) -> Tensor:
        r2 = x[:, 1] ** 2
        a = log_w[0] + norm - 0.5 * ((x[:, 0] + half) ** 2 + r2) / scale**2
        b = log_w[1] + norm - 0.5 * ((x[:, 0] - half) ** 2 + r2) / scale**2
        return -torch.logaddexp(a, b)

    def sampler(n: int, g: torch.Generator) -> Tensor:
        left = torch.rand(n, generator=g, dtype=torch.float64) < weight_left
        centre = torch.where(left, -half, half)
        e = torch.randn(n, 2, generator=g, dtype=torch.float64) * scale
        return torch.stack([centre + e[:, 0], e[:, 1]], dim=1)

    reach = half + 12 * scale
    return Energy(f"two Gaussians ({weight_left:g} : {1 - weight_left:g})", 2, potential,
                  (-reach, reach, -12 * scale, 12 * scale),
                  (-half - 4 * scale, half + 4 * scale, -half, half), 0.0, sampler,
                  ((-half, weight_left), (half, 1 - weight_left)), scale)


def half_plane_mass(energy: Energy, threshold: float = 0.0) -> float:
    """Exact mass of ``x1 < threshold`` under a :func:`two_gaussians` target."""
    modes, scale = energy.modes, energy.mode_scale
    if modes is None or scale is None:
        raise ValueError(f"half_plane_mass: {energy.name!r} is not a two_gaussians target; "
                         "for another target integrate exp(-U) on a grid (log_normalizer).")
    return sum(w * 0.5 * math.erfc(-(threshold - m) / (scale * math.sqrt(2))) for m, w in modes)


@torch.no_grad()
def log_normalizer(energy: Energy, n: int = 1201, box: Box | None = None,
                   chunk: int = 1 << 18) -> float:
    """``log Z = log \\int exp(-U(x)) dx`` over the 2-D ``box`` (default ``energy.box``) by the
    trapezoidal rule on an ``n x n`` grid, in float64 with log-sum-exp.

    Raises:
        ValueError: the energy is not 2-D, ``n < 3``, or the box's edges carry mass (the box
            is too small: ``exp(-U)`` on its border is above ``1e-12`` of its peak).
    """
    if energy.dim != 2:
        raise ValueError(f"log_normalizer: grid quadrature is for 2-D targets; {energy.name!r} "
                         f"has dim {energy.dim}.")
    n = check_count(n, "log_normalizer(n)", "grid points per axis")
    if n < 3:
        raise ValueError(f"log_normalizer: need at least 3 grid points per axis, got {n}.")
    x0, x1, y0, y1 = box if box is not None else energy.box
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"log_normalizer: the box {box} is empty; pass (xmin, xmax, ymin, ymax).")
    xs = torch.linspace(x0, x1, n, dtype=torch.float64)
    ys = torch.linspace(y0, y1, n, dtype=torch.float64)
    wx = torch.full((n,), (x1 - x0) / (n - 1), dtype=torch.float64)
    wy = torch.full((n,), (y1 - y0) / (n - 1), dtype=torch.float64)
    wx[[0, -1]] *= 0.5
    wy[[0, -1]] *= 0.5
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    log_w = (wy[:, None].log() + wx[None, :].log()).reshape(-1)
    values = torch.cat([-energy.potential(p) for p in pts.split(chunk)])
    grid = values.reshape(n, n)
    edge = torch.cat([grid[0], grid[-1], grid[:, 0], grid[:, -1]]).max()
    if bool(edge > grid.max() + math.log(1e-12)):
        raise ValueError(f"log_normalizer({energy.name}): the density on the border of the box "
                         f"{(x0, x1, y0, y1)} is {float((edge - grid.max()).exp()):.1e} of its "
                         "peak; enlarge the box.")
    return float(torch.logsumexp(values + log_w, dim=0))
