"""Chapter 1's flows: elementwise maps, polar coordinates, planar and radial flows.

Every class follows the protocol of :mod:`nfcourse.core.flow` (``forward`` is latent to data).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfcourse.core.flow import Flow, sum_except_batch
from nfcourse.core.validation import validation_enabled


def _require(condition: Tensor, message: str) -> None:
    """Domain check, skipped when validation is switched off."""
    if validation_enabled() and not bool(condition.all()):
        raise ValueError(message)


class ElementwiseAffine(Flow):
    """``x = z * exp(log_scale) + shift``, elementwise; ``log|det| = sum(log_scale)``.

    Starts as the identity unless ``log_scale``/``shift`` are given.
    """

    def __init__(self, event_shape: int | Sequence[int],
                 log_scale: Tensor | float | None = None,
                 shift: Tensor | float | None = None) -> None:
        super().__init__(event_shape)
        assert self.event_shape is not None
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))
        self.shift = nn.Parameter(torch.zeros(self.event_shape))
        with torch.no_grad():
            if log_scale is not None:
                self.log_scale.copy_(torch.as_tensor(log_scale).expand(self.event_shape))
            if shift is not None:
                self.shift.copy_(torch.as_tensor(shift).expand(self.event_shape))

    def _logdet(self, batch: int) -> Tensor:
        return self.log_scale.sum().expand(batch)

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z * self.log_scale.exp() + self.shift, self._logdet(z.shape[0])

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return (x - self.shift) * (-self.log_scale).exp(), -self._logdet(x.shape[0])


class Exp(Flow):
    """``x = exp(z)`` elementwise, from the real line to ``(0, inf)``; ``log|det| = sum(z)``."""

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z.exp(), sum_except_batch(z)

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _require(x > 0, "Exp.inverse(x): x must be > 0 (the image of exp); got a value <= 0.")
        z = x.log()
        return z, -sum_except_batch(z)


class Sigmoid(Flow):
    """``x = 1 / (1 + exp(-z))`` elementwise, from the real line to ``(0, 1)``.

    ``dx/dz = s(z) s(-z)``, so ``log|det| = sum(log s(z) + log s(-z))``, written with
    ``logsigmoid`` so it stays finite for large ``|z|``.
    """

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return torch.sigmoid(z), sum_except_batch(F.logsigmoid(z) + F.logsigmoid(-z))

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _require((x > 0) & (x < 1), "Sigmoid.inverse(x): x must lie strictly inside (0, 1); "
                 "clip it first, e.g. x.clamp(1e-6, 1 - 1e-6).")
        z = x.log() - torch.log1p(-x)
        return z, -sum_except_batch(x.log() + torch.log1p(-x))


class Logit(Flow):
    """``x = logit(alpha + (1 - 2 alpha) z)``: from the unit box to the real line.

    With ``alpha = 0`` (the default) it is the plain logit, the inverse of :class:`Sigmoid`.
    ``alpha`` in ``[0, 0.5)`` squeezes the box first, so ``x`` stays finite even at ``z = 0``
    or ``1`` (the pixels of a dequantised image, RealNVP's 0.05). With
    ``s = alpha + (1 - 2 alpha) z``, ``dx/dz = (1 - 2 alpha) / (s (1 - s))`` per entry, so

        log|det dx/dz| = D log(1 - 2 alpha) - sum(log s + log(1 - s)),

    and ``inverse`` (``z = (sigmoid(x) - alpha) / (1 - 2 alpha)``) returns its negative at the
    matching point. Image models put ``Inverse(Logit(...))`` at their data end, so that their
    density is on the box.
    """

    def __init__(self, event_shape: int | Sequence[int] | None = None,
                 alpha: float = 0.0) -> None:
        if not 0 <= alpha < 0.5:
            raise ValueError(f"Logit: alpha must be in [0, 0.5), got {alpha}.")
        super().__init__(event_shape)
        self.alpha = float(alpha)

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        s = self.alpha + (1 - 2 * self.alpha) * z
        if validation_enabled() and not bool(((s > 0) & (s < 1)).all()):
            lo, hi = -self.alpha / (1 - 2 * self.alpha), (1 - self.alpha) / (1 - 2 * self.alpha)
            raise ValueError(f"Logit.forward(z): z must lie in ({lo:.4g}, {hi:.4g}), the unit "
                             f"box widened by alpha = {self.alpha}; got values outside. Clip "
                             f"it first, e.g. z.clamp(1e-6, 1 - 1e-6).")
        log_s, log_1ms = torch.log(s), torch.log1p(-s)
        return log_s - log_1ms, sum_except_batch(math.log(1 - 2 * self.alpha) - log_s - log_1ms)

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        scale = 1 - 2 * self.alpha
        z = (torch.sigmoid(x) - self.alpha) / scale
        # log dz/dx = log s(x) + log s(-x) - log(scale), with logsigmoid to stay finite
        return z, sum_except_batch(F.logsigmoid(x) + F.logsigmoid(-x) - math.log(scale))


class Polar(Flow):
    """Polar to Cartesian coordinates in 2-D: ``(r, theta) -> (r cos theta, r sin theta)``.

    A bijection from ``(0, inf) x (-pi, pi)`` to the plane minus the ray ``theta = pi``;
    ``log|det| = log r``: the area element ``dx dy = r dr dtheta``.
    """

    def __init__(self) -> None:
        super().__init__((2,))

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        r, theta = z[:, 0], z[:, 1]
        _require(r > 0, "Polar.forward: the radius z[:, 0] must be > 0.")
        _require(theta.abs() < math.pi, "Polar.forward: the angle z[:, 1] must lie in (-pi, pi).")
        x = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)
        return x, r.log()

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r = torch.hypot(x[:, 0], x[:, 1])
        _require(r > 0, "Polar.inverse: the origin has no polar coordinates; got x = (0, 0).")
        theta = torch.atan2(x[:, 1], x[:, 0])
        return torch.stack([r, theta], dim=1), -r.log()


class Planar(Flow):
    """Planar flow (Rezende & Mohamed, 2015): ``x = z + u_hat * tanh(w . z + b)``.

    ``u`` is re-parameterised to ``u_hat`` so that ``w . u_hat >= -1 + 1e-3`` (the condition for
    invertibility is ``> -1``; the margin keeps it strict in float32); then ``log|det| = log(1 + (1 - tanh^2(w . z + b)) w . u_hat)``.

    There is no closed-form inverse. :meth:`inverse` solves the scalar equation
    ``w . x = s + (w . u_hat) tanh(s + b)`` for ``s = w . z`` by bisection (the left side is
    strictly increasing in ``s`` and the root lies within ``|w . u_hat|`` of ``w . x``), then
    takes one Newton step so that gradients through the inverse are the exact implicit ones.
    The inverse is therefore accurate to floating-point round-off, but slower than forward.
    """

    MARGIN = 1e-3

    def __init__(self, features: int, generator: torch.Generator | None = None,
                 init_scale: float = 1.0) -> None:
        super().__init__((features,))
        std = init_scale / math.sqrt(features)
        self.w = nn.Parameter(torch.randn(features, generator=generator) * std)
        self.u = nn.Parameter(torch.randn(features, generator=generator) * std)
        self.b = nn.Parameter(torch.randn((), generator=generator) * init_scale)

    @classmethod
    def from_values(cls, w: Sequence[float], u: Sequence[float], b: float) -> Planar:
        """A planar flow with the given raw parameters (``u`` is still constrained to ``u_hat``)."""
        flow = cls(len(w))
        with torch.no_grad():
            flow.w.copy_(torch.as_tensor(w))
            flow.u.copy_(torch.as_tensor(u))
            flow.b.fill_(float(b))
        return flow

    def u_hat(self) -> Tensor:
        """``u`` moved along ``w`` so that ``w . u_hat = -1 + 1e-3 + softplus(w . u)``."""
        wu = self.w @ self.u
        return self.u + (-1 + self.MARGIN + F.softplus(wu) - wu) * self.w / (self.w @ self.w)

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        u_hat = self.u_hat()
        h = torch.tanh(z @ self.w + self.b)
        x = z + h[:, None] * u_hat
        logdet = torch.log1p((1 - h**2) * (self.w @ u_hat))
        return x, logdet

    def _inverse(self, x: Tensor, iterations: int = 200) -> tuple[Tensor, Tensor]:
        u_hat = self.u_hat()
        c = self.w @ u_hat           # > -1, so g(s) below is strictly increasing
        target = x @ self.w          # w . x
        with torch.no_grad():
            lo = target - c.abs() - 1e-12
            hi = target + c.abs() + 1e-12
            for _ in range(iterations):
                mid = 0.5 * (lo + hi)
                above = mid + c * torch.tanh(mid + self.b) > target
                hi = torch.where(above, mid, hi)
                lo = torch.where(above, lo, mid)
                if bool(((hi - lo) <= 4 * torch.finfo(x.dtype).eps * (1 + mid.abs())).all()):
                    break
            s0 = 0.5 * (lo + hi)
        # One Newton step from the (detached) root: exact value, and by the implicit function
        # theorem the exact first derivatives with respect to x and the parameters.
        t0 = torch.tanh(s0 + self.b)
        s = s0 - (s0 + c * t0 - target) / (1 + c * (1 - t0**2))
        h = torch.tanh(s + self.b)
        z = x - h[:, None] * u_hat
        return z, -torch.log1p((1 - h**2) * c)


class Radial(Flow):
    """Radial flow (Rezende & Mohamed, 2015): ``x = z + beta / (alpha + r) * (z - z0)``.

    ``r = |z - z0|``, ``alpha = softplus(a) > 0`` and ``beta = -alpha + softplus(b) > -alpha``
    (the invertibility condition). With ``h = 1 / (alpha + r)``,
    ``log|det| = (D - 1) log(1 + beta h) + log(1 + beta alpha h^2)``.

    The inverse has a closed form: ``R = |x - z0| = r (1 + beta / (alpha + r))`` is a quadratic
    in ``r`` with one non-negative root.
    """

    def __init__(self, features: int, generator: torch.Generator | None = None,
                 init_scale: float = 1.0) -> None:
        super().__init__((features,))
        self.z0 = nn.Parameter(torch.randn(features, generator=generator) * init_scale)
        self.a = nn.Parameter(torch.randn((), generator=generator))
        self.b = nn.Parameter(torch.randn((), generator=generator))

    @classmethod
    def from_values(cls, z0: Sequence[float], alpha: float, beta: float) -> Radial:
        """A radial flow with centre ``z0``, ``alpha > 0`` and ``beta > -alpha``."""
        if alpha <= 0 or beta <= -alpha:
            raise ValueError(f"Radial: need alpha > 0 and beta > -alpha, got alpha={alpha}, "
                             f"beta={beta}")
        flow = cls(len(z0))
        with torch.no_grad():
            flow.z0.copy_(torch.as_tensor(z0))
            a = torch.tensor(float(alpha))
            flow.a.copy_(a + torch.log(-torch.expm1(-a)))           # softplus^-1(alpha)
            s = torch.tensor(float(beta + alpha))
            flow.b.copy_(s + torch.log(-torch.expm1(-s)))           # softplus^-1(beta + alpha)
        return flow

    def alpha_beta(self) -> tuple[Tensor, Tensor]:
        alpha = F.softplus(self.a)
        return alpha, -alpha + F.softplus(self.b)

    def _logdet(self, r: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        d = self.z0.shape[0]
        h = 1 / (alpha + r)
        return (d - 1) * torch.log1p(beta * h) + torch.log1p(beta * alpha * h**2)

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        alpha, beta = self.alpha_beta()
        diff = z - self.z0
        r = diff.norm(dim=1)
        x = z + (beta / (alpha + r))[:, None] * diff
        return x, self._logdet(r, alpha, beta)

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        alpha, beta = self.alpha_beta()
        diff = x - self.z0
        big_r = diff.norm(dim=1)
        # r^2 + (alpha + beta - R) r - R alpha = 0; pick the form of the root without cancellation
        p = alpha + beta - big_r
        root = torch.sqrt(p**2 + 4 * big_r * alpha)
        r = torch.where(p > 0, 2 * big_r * alpha / (p + root), (root - p) / 2)
        z = self.z0 + diff / (1 + beta / (alpha + r))[:, None]
        return z, -self._logdet(r, alpha, beta)
