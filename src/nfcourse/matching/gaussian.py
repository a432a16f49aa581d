"""Closed-form marginal velocities: noise ``N(0, I)`` to a mixture of isotropic Gaussians.

With the independent coupling and a path ``x_t = alpha x1 + sigma x0``, the marginal
(flow-matching) velocity is the conditional one averaged over the pairs that pass through
``x``: ``u_t(x) = E[alpha' x1 + sigma' x0 | x_t = x]``. When the data are a Gaussian mixture
``sum_k pi_k N(mu_k, s_k^2 I)``, given the component ``k`` the pair and ``x_t`` are jointly
Gaussian, so

    x_t | k  ~  N(alpha mu_k, v_k I),                v_k = alpha^2 s_k^2 + sigma^2,
    E[x1 | x_t, k] = mu_k + alpha s_k^2 / v_k (x_t - alpha mu_k),
    E[x0 | x_t, k] = sigma / v_k (x_t - alpha mu_k),

and the component's posterior weight is ``pi_k N(x_t; alpha mu_k, v_k I)`` normalised. This
gives the exact marginal field that CFM's regression should converge to, and the exact
marginal density ``p_t``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nfcourse.matching.paths import GaussianPath, as_time


class GaussianMixture:
    """``sum_k weights_k N(means_k, stds_k^2 I)``; ``means [K, D]``, ``weights, stds [K]``."""

    def __init__(self, means: Tensor, stds: Tensor | float, weights: Tensor | None = None
                 ) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() != 2:
            raise ValueError(f"GaussianMixture: means must be [K, D], got {list(means.shape)}.")
        k = means.shape[0]
        stds = torch.as_tensor(stds, dtype=torch.float64).expand(k).clone()
        weights = (torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None
                   else torch.as_tensor(weights, dtype=torch.float64))
        if weights.shape != (k,) or bool((weights < 0).any()) or \
                abs(float(weights.sum()) - 1) > 1e-9:
            raise ValueError("GaussianMixture: weights must be K non-negative numbers summing "
                             "to 1.")
        if bool((stds <= 0).any()):
            raise ValueError("GaussianMixture: every std must be > 0.")
        self.means, self.stds, self.weights = means, stds, weights

    @classmethod
    def eight_gaussians(cls, radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
        """The layout of :func:`nfcourse.data.eight_gaussians`."""
        a = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        return cls(radius * torch.stack([torch.cos(a), torch.sin(a)], 1), std)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` points ``[n, D]`` (float32)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[k] + self.stds[k, None] * eps).float()

    def _posterior(self, path: GaussianPath, x: Tensor, t: Tensor | float
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"GaussianMixture: x must be [B, {self.dim}], got "
                             f"{getattr(x, 'shape', type(x).__name__)}.")
        xd = x.double()
        tt = as_time(t, x.shape[0], xd, "GaussianMixture")          # [B, 1]
        a, s = path.alpha(tt), path.sigma(tt)                         # [B, 1]
        var = a**2 * self.stds**2 + s**2                              # [B, K]
        diff = xd[:, None, :] - a[:, :, None] * self.means[None]      # [B, K, D]
        logw = (torch.log(self.weights) - 0.5 * diff.square().sum(-1) / var
                - 0.5 * self.dim * torch.log(2 * math.pi * var))      # [B, K]
        return tt, logw, var, diff, a

    def marginal_log_prob(self, path: GaussianPath, x: Tensor, t: Tensor | float) -> Tensor:
        """``log p_t(x)`` ``[B]`` (float64) of the path's marginal at time ``t``."""
        _, logw, _, _, _ = self._posterior(path, x, t)
        return torch.logsumexp(logw, dim=1)

    def marginal_velocity(self, path: GaussianPath, x: Tensor, t: Tensor | float) -> Tensor:
        """The exact marginal velocity ``u_t(x)`` ``[B, D]`` (float64), independent coupling."""
        tt, logw, var, diff, a = self._posterior(path, x, t)
        s = path.sigma(tt)
        w = torch.softmax(logw, dim=1)[:, :, None]                    # [B, K, 1]
        e_x1 = self.means[None] + (a * self.stds**2 / var)[:, :, None] * diff
        e_x0 = (s / var)[:, :, None] * diff
        u = path.d_alpha(tt)[:, :, None] * e_x1 + path.d_sigma(tt)[:, :, None] * e_x0
        return (w * u).sum(1)

    def field(self, path: GaussianPath) -> _MarginalField:
        """The marginal velocity as a field ``v(t, x)`` an ODE solver can integrate."""
        return _MarginalField(self, path)


class _MarginalField(torch.nn.Module):
    def __init__(self, mix: GaussianMixture, path: GaussianPath) -> None:
        super().__init__()
        self.mix, self.path = mix, path

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        tv = float(t) if not isinstance(t, Tensor) or t.dim() == 0 else t
        return self.mix.marginal_velocity(self.path, x, tv).to(x.dtype)


def gaussian_1d_velocity(x: Tensor, t: Tensor | float, mean: float, std: float,
                         path: GaussianPath) -> Tensor:
    """Exact marginal velocity ``[B, 1]`` from ``N(0, 1)`` to ``N(mean, std^2)`` in 1-D.

    ``E[alpha' x1 + sigma' x0 | x_t = x]`` for jointly Gaussian variables:
    ``alpha' mean + (alpha alpha' std^2 + sigma sigma') / (alpha^2 std^2 + sigma^2)
    (x - alpha mean)``: affine in ``x`` at each ``t``.
    """
    mix = GaussianMixture(torch.tensor([[float(mean)]]), float(std))
    return mix.marginal_velocity(path, x, t)
