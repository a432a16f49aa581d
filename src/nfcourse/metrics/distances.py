"""Distances between samples, path straightness and discretisation error.

* :func:`w2` -- exact 2-Wasserstein distance between two samples (POT).
* :func:`mmd2` -- maximum mean discrepancy with a sum of Gaussian kernels (unbiased ``MMD^2``).
* :func:`straightness` -- Liu et al.'s ``S = E int_0^1 |(x_1 - x_0) - dx_t/dt|^2 dt`` of a
  discretised trajectory: 0 exactly when every particle moves on a straight line at constant
  speed, which is when one Euler step is exact.
* :func:`endpoint_error` -- RMS distance between the end points of a coarse and a reference
  solve from the same starting points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

import numpy as np
import ot

from nfcourse.core.validation import check_tensor

__all__ = ["w2", "mmd2", "straightness", "endpoint_error"]


def _check(x: Tensor, name: str, who: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"{who}: {name} must be [N, D], got "
                         f"{getattr(x, 'shape', type(x).__name__)}.")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{who}: {name} contains NaN or inf; the sampler diverged or the "
                         "input is corrupt; drop those rows or fix the sampler.")


def w2(x: Tensor, y: Tensor) -> float:
    """Exact 2-Wasserstein distance between two empirical measures (uniform weights).

    ``x [N, D]``, ``y [M, D]``; solves the optimal transport linear programme with POT's
    ``ot.emd2`` on squared Euclidean costs (cost ``O(N M)`` memory; keep ``N, M`` at a few
    thousand). Even for two samples of the *same* distribution the result is positive and
    shrinks slowly with ``N``, so always compare against that noise floor.
    """
    for name, t in (("x", x), ("y", y)):
        check_tensor(t, None, name=f"w2({name})")
        if t.dim() != 2:
            raise ValueError(f"w2({name}): expected [N, D], got {list(t.shape)}.")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"w2: dimensions differ ({x.shape[1]} vs {y.shape[1]}).")
    a = x.detach().double().cpu().numpy()
    b = y.detach().double().cpu().numpy()
    cost = ot.dist(a, b, metric="sqeuclidean")
    wa = np.full(len(a), 1.0 / len(a))
    wb = np.full(len(b), 1.0 / len(b))
    return float(math.sqrt(max(ot.emd2(wa, wb, cost, numItermax=10_000_000), 0.0)))


def mmd2(x: Tensor, y: Tensor, bandwidths: Sequence[float] = (0.05, 0.1, 0.2, 0.5, 1.0)
        ) -> float:
    """Unbiased ``MMD^2`` between samples ``x [N, D]`` and ``y [M, D]`` (``N, M >= 2``).

    Kernel ``k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2))`` over ``bandwidths`` (data units). The
    unbiased estimate is 0 in expectation for equal distributions and can be slightly negative.
    """
    _check(x, "x", "mmd2")
    _check(y, "y", "mmd2")
    if x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(f"mmd2: need >= 2 points each with equal dimensions, got "
                         f"{list(x.shape)} and {list(y.shape)}.")
    if not bandwidths or any(not (h > 0 and math.isfinite(h)) for h in bandwidths):
        raise ValueError(f"mmd2: bandwidths must be finite and > 0, got {list(bandwidths)}.")
    x, y = x.double(), y.double()

    def k(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).square()
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)  # type: ignore[return-value]

    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())


def straightness(traj: Tensor) -> float:
    """``S`` of a trajectory ``[K + 1, B, D]`` on the uniform grid ``t_k = k / K``.

    Each step's velocity ``(x_{k+1} - x_k) K`` is compared with the overall displacement
    ``x_K - x_0``; ``S`` is the mean over steps and particles of the squared difference.
    """
    if not isinstance(traj, Tensor) or traj.dim() != 3 or traj.shape[0] < 2:
        raise ValueError(f"straightness: expected a trajectory [K + 1, B, D] with K >= 1, got "
                         f"{getattr(traj, 'shape', type(traj).__name__)}.")
    k = traj.shape[0] - 1
    vel = (traj[1:] - traj[:-1]) * k
    disp = traj[-1] - traj[0]
    return float((vel - disp).square().sum(-1).mean())


def endpoint_error(x: Tensor, reference: Tensor) -> float:
    """RMS Euclidean distance ``sqrt(mean |x_i - ref_i|^2)`` between matched rows ``[N, D]``."""
    _check(x, "x", "endpoint_error")
    _check(reference, "reference", "endpoint_error")
    if x.shape != reference.shape:
        raise ValueError(f"endpoint_error: shapes differ, {list(x.shape)} vs "
                         f"{list(reference.shape)}; compare solves of the same starting points.")
    return float((x - reference).double().square().sum(1).mean().sqrt())
