"""The uncertainty of a Monte Carlo estimate: mean ± standard error, and bootstrap intervals.

* :func:`mean_se` -- the sample mean of per-point values and its standard error
  ``s / sqrt(n)`` (``s`` the sample standard deviation with Bessel's correction). Every
  "± se" in the library and the book comes from here.
* :func:`bootstrap_interval` -- a percentile-bootstrap interval of a statistic of one or more
  independent samples, each resampled separately at its own size (:func:`scipy.stats.bootstrap`
  with ``paired=False``), reproducible for a fixed ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import scipy.stats
import torch
from torch import Tensor

__all__ = ["mean_se", "bootstrap_interval"]


def mean_se(values: Tensor | np.ndarray | Sequence[float]) -> tuple[float, float]:
    """``(mean, standard error)`` of the 1-D ``values``, computed in float64.

    The standard error is ``std / sqrt(n)`` with the unbiased (``n - 1``) standard deviation.
    With a single value the mean is that value and the standard error is undefined: it is
    returned as ``nan`` (so printing ``± nan`` shows that nothing was measured) rather than
    raising, because one evaluation point is a legitimate, if uninformative, run.

    Raises:
        ValueError: ``values`` is empty or not one-dimensional.
    """
    v = torch.as_tensor(values.detach() if isinstance(values, Tensor) else values,
                        dtype=torch.float64)
    if v.dim() != 1 or v.numel() == 0:
        raise ValueError(f"mean_se: expected a non-empty 1-D sequence of values (one per "
                         f"point), got shape {list(v.shape)}.")
    n = v.numel()
    if n == 1:
        return float(v[0]), math.nan
    return float(v.mean()), float(v.std() / math.sqrt(n))


def bootstrap_interval(statistic: Callable[..., float], *samples: np.ndarray,
                       n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                       vectorized: bool = False) -> tuple[float, float]:
    """Percentile-bootstrap interval ``(low, high)`` of ``statistic(*samples)``.

    Each replicate resamples every sample separately, with replacement and at its own size (a
    stratified bootstrap when the samples are groups, so every replicate keeps their mix). The
    interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the ``n_boot``
    replicates; the same ``seed`` gives the same interval.

    ``vectorized=True`` declares that ``statistic(*batches, axis=-1)`` accepts samples with a
    leading replicate axis and returns one value per replicate; the replicates are then
    evaluated 100 at a time instead of one Python call each, which matters for large samples.
    Replicates are always drawn in batches of 100, so both ways give the same interval.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 10:
        raise ValueError(f"bootstrap_interval: n_boot must be an int >= 10 (1000 is typical), "
                         f"got {n_boot!r}.")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_interval: level must be in (0, 1), e.g. 0.95, got "
                         f"{level!r}.")
    if not samples:
        raise ValueError("bootstrap_interval: pass at least one sample.")
    result = scipy.stats.bootstrap(
        samples, statistic, n_resamples=n_boot, vectorized=vectorized, paired=False,
        batch=100,
        confidence_level=level, method="percentile", random_state=np.random.default_rng(seed))
    ci = result.confidence_interval
    return float(ci.low), float(ci.high)
