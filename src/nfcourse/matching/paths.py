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

Training draws the point and its target together, :meth:`GaussianPath.sample_and_velocity`:
one check of the inputs instead of two, the time values read only while validation is on
(:func:`nfcourse.core.validation.validation`), and each path's closed form, so the draw is a
handful of tensor operations instead of one per schedule term.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nfcourse.core.validation import validation_enabled


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


def _range_error(who: str, lo: float, hi: float) -> ValueError:
    return ValueError(f"{who}: times must lie in [0, 1] (0 = noise, 1 = data), got values "
                      f"in [{lo:.3g}, {hi:.3g}].")


def draw_time(t: Tensor | float, batch: int, ref: Tensor, who: str = "path") -> Tensor | float:
    """``t`` as :meth:`GaussianPath.sample_and_velocity` uses it: a float stays a float, a
    tensor (0-d or ``[B]``) becomes a column ``[B, 1]`` of ``ref``'s dtype/device.

    The shape is always checked (it costs no tensor operation); the values lie in [0, 1] and
    are finite is checked only while validation is on, since reading them is one reduction
    and, on a GPU, a device sync. Raises ``ValueError`` as :func:`as_time` does.
    """
    check = validation_enabled()
    if not isinstance(t, Tensor):
        tf = float(t)
        if check and not 0.0 <= tf <= 1.0:  # NaN fails this too
            raise _range_error(who, tf, tf)
        return tf
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"{who}: t must be a float or a tensor [B] = [{batch}], got shape "
                         f"{list(t.shape)}; use one time per row.")
    if t.dtype != ref.dtype or t.device != ref.device:  # .to() is an operator even when a no-op
        t = t.to(dtype=ref.dtype, device=ref.device)
    if check and batch > 0:
        lo, hi = torch.aminmax(t)  # one reduction; a NaN makes both NaN, inf lands in one
        lo_f, hi_f = float(lo), float(hi)
        if not (0.0 <= lo_f and hi_f <= 1.0):
            raise _range_error(who, lo_f, hi_f)
    return t.unsqueeze(1)


_SCHEDULES = ("alpha", "sigma", "d_alpha", "d_sigma")


class GaussianPath:
    """``x_t = alpha(t) x1 + sigma(t) x0``; subclasses define the two schedules.

    A subclass may add a closed form of the joint draw, ``_point_and_velocity``; one that
    redefines a schedule (or ``sample``/``velocity``) without one falls back to the general
    draw, so :meth:`sample_and_velocity` always agrees with :meth:`sample` and :meth:`velocity`.
    """

    name = "gaussian"
    _by_methods = False  # True: sample_and_velocity calls sample() and velocity()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if "_point_and_velocity" in own:
            return
        if "sample" in own or "velocity" in own:
            cls._by_methods = True
        elif any(name in own for name in _SCHEDULES):
            # an inherited closed form no longer matches the new schedules
            cls._point_and_velocity = GaussianPath._point_and_velocity  # type: ignore[method-assign]

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

    def sample_and_velocity(self, x0: Tensor, x1: Tensor, t: Tensor | float
                            ) -> tuple[Tensor, Tensor]:
        """``(x_t, u_t)``, both ``[B, D]``: :meth:`sample` and :meth:`velocity` in one call.

        The pair's shapes and the times' shape are checked once; that the times lie in
        [0, 1] only while validation is on (see :func:`draw_time`). Equal to the two
        separate calls up to rounding (the closed forms reorder the arithmetic). This is the
        draw of every training step (:func:`nfcourse.matching.train.cfm_loss`).
        """
        if self._by_methods:
            return self.sample(x0, x1, t), self.velocity(x0, x1, t)
        who = f"{type(self).__name__}.sample_and_velocity"
        _check_pair(x0, x1, who)
        return self._point_and_velocity(x0, x1, draw_time(t, x0.shape[0], x0, who))

    def _point_and_velocity(self, x0: Tensor, x1: Tensor, t: Tensor | float
                            ) -> tuple[Tensor, Tensor]:
        """The general draw from the four schedules; ``t`` a float or a column ``[B, 1]``."""
        tt = (t if isinstance(t, Tensor)
              else torch.full((x0.shape[0], 1), t, dtype=x0.dtype, device=x0.device))
        return (self.alpha(tt) * x1 + self.sigma(tt) * x0,
                self.d_alpha(tt) * x1 + self.d_sigma(tt) * x0)

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

    def _point_and_velocity(self, x0: Tensor, x1: Tensor, t: Tensor | float
                            ) -> tuple[Tensor, Tensor]:
        # u = x1 - (1 - sigma_min) x0 does not depend on t, and x_t = x0 + t u: two operators
        c = 1.0 - self.sigma_min
        if c == 1.0:
            u = x1 - x0
            # lerp is exact at both ends (x_0 = x0, x_1 = x1)
            return torch.lerp(x0, x1, t), u
        u = torch.add(x1, x0, alpha=-c)
        xt = torch.addcmul(x0, t, u) if isinstance(t, Tensor) else torch.add(x0, u, alpha=t)
        return xt, u

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

    def _point_and_velocity(self, x0: Tensor, x1: Tensor, t: Tensor | float
                            ) -> tuple[Tensor, Tensor]:
        # the sine and cosine once each, not once per schedule term
        if isinstance(t, Tensor):
            theta = 0.5 * math.pi * t
            a, s = torch.sin(theta), torch.cos(theta)
            da, ds = 0.5 * math.pi * s, -0.5 * math.pi * a
        else:
            a, s = math.sin(0.5 * math.pi * t), math.cos(0.5 * math.pi * t)
            da, ds = 0.5 * math.pi * s, -0.5 * math.pi * a
        return a * x1 + s * x0, da * x1 + ds * x0

    def __repr__(self) -> str:
        return "VPPath()"


PATHS: dict[str, type[GaussianPath]] = {"linear": LinearPath, "straight": StraightPath,
                                        "vp": VPPath}
