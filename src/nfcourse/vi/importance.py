"""Importance sampling with a proposal ``q`` (a trained flow, or any density one can sample).

With ``x_i ~ q`` and weights ``w_i = p~(x_i) / q(x_i)`` (``p~`` unnormalised),
``Z_hat = mean(w)`` is unbiased for ``Z``; its log is reported as ``log Z_hat =
logmeanexp(log w)`` (biased low by about ``var(w) / (2 n mean(w)^2)``, Jensen), with the
delta-method standard error ``se(log Z_hat) = sd(w) / (sqrt(n) mean(w))``. Kish's effective
sample size ``ESS = (sum w)^2 / sum w^2`` says how many independent draws of ``p`` the ``n``
weighted draws of ``q`` are worth; ``n / ESS - 1`` estimates the chi-square divergence
``chi^2(p || q) = E_q[(p/q)^2] - 1``, so a proposal with a small KL can still have a poor
ESS when it misses a tail of ``p``. All computations are in float64 on weights divided by
their largest value (no overflow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ImportanceEstimate", "log_mean_exp", "importance_log_z", "kish_ess"]


def _log_w(log_w: object) -> Tensor:
    if not isinstance(log_w, Tensor):
        log_w = torch.as_tensor(log_w, dtype=torch.float64)
    lw = log_w.detach().to(torch.float64).cpu()
    if lw.dim() != 1 or lw.numel() < 2:
        raise ValueError(f"expected a 1-D tensor of at least 2 log-weights (one per sample), "
                         f"got shape {list(lw.shape)}.")
    if bool(torch.isnan(lw).any()) or bool((lw == math.inf).any()):
        raise ValueError("the log-weights contain NaN or +inf; a weight of 0 is -inf, which is "
                         "allowed, but NaN means the target or the proposal failed.")
    if bool((lw == -math.inf).all()):
        raise ValueError("every weight is zero (all log-weights are -inf): the proposal puts "
                         "no sample where the target has mass.")
    return lw


def log_mean_exp(log_w: Tensor) -> float:
    """``log(mean(exp(log_w)))`` in float64, stably."""
    lw = _log_w(log_w)
    return float(torch.logsumexp(lw, dim=0) - math.log(lw.numel()))


def kish_ess(log_w: Tensor) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2``, from log-weights (in ``[1, n]``)."""
    lw = _log_w(log_w)
    w = torch.exp(lw - lw.max())
    return float(w.sum() ** 2 / (w**2).sum())


@dataclass(frozen=True)
class ImportanceEstimate:
    """``log Z_hat ± se`` (delta method), Kish's ``ess`` and ``n``, from one set of weights."""

    log_z: float
    se: float
    ess: float
    n: int

    @property
    def ess_fraction(self) -> float:
        return self.ess / self.n


def importance_log_z(log_w: Tensor) -> ImportanceEstimate:
    """The importance-weighted ``log Z`` estimate from log-weights ``log p~(x_i) - log q(x_i)``
    of ``n`` independent draws ``x_i ~ q``, with its delta-method s.e. and Kish's ESS."""
    lw = _log_w(log_w)
    n = lw.numel()
    w = torch.exp(lw - lw.max())
    mean = w.mean()
    se = float(w.std() / (math.sqrt(n) * mean))
    return ImportanceEstimate(float(mean.log() + lw.max()), se,
                              float(w.sum() ** 2 / (w**2).sum()), n)
