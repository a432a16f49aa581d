"""Conditional probability paths for flow matching, with their exact conditional velocities.

**Time convention (the whole book):** ``t = 0`` is noise, ``t = 1`` is data. A path
interpolates a noise point ``x0 ~ N(0, I)`` and a data point ``x1``,

    x_t = alpha(t) * x1 + sigma(t) * x0,      alpha(0) = 0, alpha(1) = 1, sigma(0) = 1,

and a point moving along it has the *conditional velocity*

    u_t(x0, x1) = d x_t / dt = alpha'(t) * x1 + sigma'(t) * x0.

Written in terms of the current point instead of the noise (Lipman et al.'s form,
``x0 = (x - alpha x1) / sigma``) it is

    u_t(x | x1) = alpha'(t) x1 + sigma'(t) / sigma(t) * (x - alpha(t) x1),

which needs ``sigma(t) > 0``. The lecture runs time the other way (its ``t = 0`` is data):
its time ``s`` is our ``1 - t``.

Paths here:

* :class:`LinearPath` (Lipman et al. 2023, "OT path"): ``alpha = t``,
  ``sigma = 1 - (1 - sigma_min) t``; at ``t = 1`` the point is ``N(x1, sigma_min^2)``.
* :class:`StraightPath`: ``sigma_min = 0``, ``x_t = t x1 + (1 - t) x0`` (rectified flow;
  the velocity ``x1 - x0`` is constant in time).
* :class:`VPPath`: variance preserving (diffusion-like), ``alpha = sin(pi t / 2)``,
  ``sigma = cos(pi t / 2)``, so ``alpha^2 + sigma^2 = 1``.

Shapes: ``x0, x1, x`` are ``[B, D]``; ``t`` is ``[B]`` (one time per row) or a float.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check_pair(x0: Tensor, x1: Tensor, who: str) -> None:
    for name, v in (("x0", x0), ("x1", x1)):
        if not isinstance(v, Tensor) or v.dim() != 2:
            raise ValueError(f"{who}: {name} must be a tensor [B, D], got "
                             f"{getattr(v, 'shape', type(v).__name__)}; a single point needs "
                             f"{name}.unsqueeze(0).")
    if x0.shape != x1.shape:
        raise ValueError(f"{who}: x0 and x1 must have the same shape [B, D], got "
                         f"{list(x0.shape)} and {list(x1.shape)}; pair them first (a coupling).")


def as_time(t: Tensor | float, batch: int, ref: Tensor, who: str = "path") -> Tensor:
    """``t`` as a column ``[B, 1]`` of ``ref``'s dtype/device; a float is broadcast.

    Raises ``ValueError`` if ``t`` is not a float or a ``[B]`` tensor, or lies outside [0, 1].
    """
    if isinstance(t, Tensor):
        if t.dim() == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"{who}: t must be a float or a tensor [B] = [{batch}], got shape "
                             f"{list(t.shape)}; use one time per row.")
        tt = t.to(dtype=ref.dtype, device=ref.device)
    else:
        tt = torch.full((batch,), float(t), dtype=ref.dtype, device=ref.device)
    if bool(((tt < 0) | (tt > 1) | ~torch.isfinite(tt)).any()):
        raise ValueError(f"{who}: times must lie in [0, 1] (0 = noise, 1 = data), got values "
                         f"in [{float(tt.min()):.3g}, {float(tt.max()):.3g}].")
    return tt[:, None]


class GaussianPath:
    """``x_t = alpha(t) x1 + sigma(t) x0``; subclasses define the two schedules."""

    name = "gaussian"

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor | float) -> Tensor:
        """The point ``x_t [B, D]`` between noise ``x0 [B, D]`` and data ``x1 [B, D]``."""
        _check_pair(x0, x1, f"{type(self).__name__}.sample")
        tt = as_time(t, x0.shape[0], x0, f"{type(self).__name__}.sample")
        return self.alpha(tt) * x1 + self.sigma(tt) * x0

    def velocity(self, x0: Tensor, x1: Tensor, t: Tensor | float) -> Tensor:
        """The conditional velocity ``d x_t / dt [B, D]`` of the pair (noise -> data)."""
        _check_pair(x0, x1, f"{type(self).__name__}.velocity")
        tt = as_time(t, x0.shape[0], x0, f"{type(self).__name__}.velocity")
        return self.d_alpha(tt) * x1 + self.d_sigma(tt) * x0

    def conditional_velocity(self, x: Tensor, x1: Tensor, t: Tensor | float) -> Tensor:
        """``u_t(x | x1) [B, D]``: the velocity at ``x`` of the path conditioned on ``x1`` only.

        Needs ``sigma(t) > 0`` (for ``StraightPath`` that excludes ``t = 1``).
        """
        _check_pair(x, x1, f"{type(self).__name__}.conditional_velocity")
        tt = as_time(t, x.shape[0], x, f"{type(self).__name__}.conditional_velocity")
        s = self.sigma(tt)
        if bool((s <= 0).any()):
            raise ValueError(f"{type(self).__name__}.conditional_velocity: sigma(t) = 0 at some "
                             "t; the conditional path is a point there and has no velocity "
                             "field. Use times t < 1 or a path with sigma_min > 0.")
        a = self.alpha(tt)
        return self.d_alpha(tt) * x1 + self.d_sigma(tt) / s * (x - a * x1)


class LinearPath(GaussianPath):
    """Lipman et al.'s path: ``x_t = t x1 + (1 - (1 - sigma_min) t) x0``.

    ``sigma_min`` in ``[0, 1)`` is the width left around the data point at ``t = 1``.
    """

    name = "linear"

    def __init__(self, sigma_min: float = 1e-2) -> None:
        if not (0.0 <= sigma_min < 1.0 and math.isfinite(sigma_min)):
            raise ValueError(f"LinearPath: sigma_min must be in [0, 1), got {sigma_min}; "
                             "typical values are 0 (rectified flow) to 0.1.")
        self.sigma_min = float(sigma_min)

    def alpha(self, t: Tensor) -> Tensor:
        return t

    def sigma(self, t: Tensor) -> Tensor:
        return 1.0 - (1.0 - self.sigma_min) * t

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -(1.0 - self.sigma_min))

    def __repr__(self) -> str:
        return f"LinearPath(sigma_min={self.sigma_min:g})"


class StraightPath(LinearPath):
    """Rectified flow's path ``x_t = t x1 + (1 - t) x0``; velocity ``x1 - x0`` at every ``t``."""

    name = "straight"

    def __init__(self) -> None:
        super().__init__(0.0)

    def __repr__(self) -> str:
        return "StraightPath()"


class VPPath(GaussianPath):
    """Variance-preserving path ``x_t = sin(pi t/2) x1 + cos(pi t/2) x0``.

    For unit-variance data the marginal variance stays 1 along the path, as in a diffusion
    model's forward process (run here from noise to data).
    """

    name = "vp"

    def alpha(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.cos(0.5 * math.pi * t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def __repr__(self) -> str:
        return "VPPath()"


PATHS: dict[str, type[GaussianPath]] = {"linear": LinearPath, "straight": StraightPath,
                                        "vp": VPPath}
