"""Out-of-distribution detection with a density model: threshold ``log p(x)``.

The lecture's recipe: train a model on normal data, compute ``log p(x)`` on a validation set of
normal data, and call a new point an outlier when its log-density falls below the validation
set's ``percent``-th percentile (5 in the lecture). By construction about ``percent`` % of
normal points are then flagged (the false-positive rate), whatever the outliers look like.

Conventions used throughout: *outliers are the positive class*; a point is flagged when its
log-density is strictly below the threshold; the score that ranks points for the ROC curve is
``-log p(x)`` (higher means more anomalous). :func:`auroc` is scikit-learn's ``roc_auc_score``
with those conventions, and :func:`bootstrap_ci` gives percentile bootstrap intervals
(:func:`nfcourse.metrics.stats.bootstrap_interval`) that resample the normal and the outlier
test points separately.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.stats
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

from nfcourse.metrics.stats import bootstrap_interval

Scores = Tensor | np.ndarray


def _as_scores(x: object, name: str) -> np.ndarray:
    """A 1-D float64 NumPy array of finite scores, or a clear error."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a 1-D torch.Tensor or NumPy array of log-densities, "
                        f"got {type(x).__name__}. Convert with torch.as_tensor(values).")
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of scores (one per point), got shape "
                         f"{list(x.shape)}. Call model.log_prob(x) on a batch [B, ...] to get [B].")
    if x.size == 0:
        raise ValueError(f"{name}: is empty; at least one point is needed.")
    if not np.issubdtype(x.dtype, np.number):
        raise TypeError(f"{name}: expected numbers, got dtype {x.dtype}.")
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise ValueError(f"{name}: {bad} score(s) are NaN or infinite. A log-density of -inf "
                         "means the model gives the point zero density; clip it to a large "
                         "negative number (e.g. torch.clamp(log_p, min=-1e6)) before scoring.")
    return x


def _check_percent(percent: float) -> float:
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) \
            or not 0 < percent < 100:
        raise ValueError(f"percent must be a number strictly between 0 and 100 (e.g. 5 for the "
                         f"5th percentile), got {percent!r}.")
    return float(percent)


def percentile_threshold(val_log_p: Scores, percent: float = 5.0) -> float:
    """The ``percent``-th percentile of validation log-densities.

    Points with ``log p < threshold`` are flagged as outliers, so about ``percent`` % of the
    validation points (exactly ``floor(percent / 100 * n)`` of ``n`` distinct values, or one
    more when the percentile falls on a value) are flagged. Uses NumPy's default (linear)
    interpolation between order statistics.
    """
    percent = _check_percent(percent)
    v = _as_scores(val_log_p, "percentile_threshold: val_log_p")
    return float(np.percentile(v, percent))


def flag_outliers(log_p: Scores, threshold: float) -> np.ndarray:
    """Boolean array: True where ``log_p < threshold`` (the point is called an outlier)."""
    if not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"flag_outliers: threshold must be a finite number, got {threshold!r}.")
    return _as_scores(log_p, "flag_outliers: log_p") < threshold


def auroc(in_log_p: Scores, out_log_p: Scores) -> float:
    """Area under the ROC curve for telling outliers from normal points by ``-log p``.

    It is the probability that a random outlier has a lower log-density than a random normal
    point, ties counting one half (the Mann-Whitney U statistic divided by ``n_in * n_out``).
    """
    a = _as_scores(in_log_p, "auroc: in_log_p")
    b = _as_scores(out_log_p, "auroc: out_log_p")
    labels = np.r_[np.zeros(len(a)), np.ones(len(b))]
    # Outliers are the positive class and -log p the score that ranks them.
    return float(roc_auc_score(labels, -np.r_[a, b]))


def _auroc(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """:func:`auroc` of normal scores ``a`` and outliers ``b`` along ``axis`` (last by default).

    The same number as ``roc_auc_score`` from mid-ranks (``scipy.stats.rankdata``), but
    vectorised over leading axes: the bootstrap scores 1000 replicates of 10,000 points in a
    few batched calls, where 1000 calls of ``roc_auc_score`` would take ~6 s.
    """
    ranks = scipy.stats.rankdata(np.concatenate([-a, -b], axis=axis), axis=axis)
    n_in, n_out = a.shape[axis], b.shape[axis]
    u_out = np.take(ranks, np.arange(n_in, n_in + n_out), axis=axis).sum(axis=axis)
    return (u_out - n_out * (n_out + 1) / 2) / (n_in * n_out)


@dataclass(frozen=True)
class OODResult:
    """Outcome of thresholding log p at a validation percentile.

    ``accuracy`` is the fraction of all test points (normal and outliers pooled) classified
    correctly, so it depends on the mix: with equal numbers it is ``(1 - fpr + tpr) / 2``.
    ``tpr`` is the fraction of outliers flagged, ``fpr`` the fraction of normal points flagged.
    ``*_ci`` are ``(low, high)`` percentile-bootstrap intervals at level ``level``.
    """

    percent: float
    threshold: float
    n_in: int
    n_out: int
    accuracy: float
    tpr: float
    fpr: float
    auroc: float
    accuracy_ci: tuple[float, float]
    auroc_ci: tuple[float, float]
    level: float

    def __str__(self) -> str:
        pct = 100 * self.level
        return (f"threshold {self.threshold:.3f} ({self.percent:g}th percentile): accuracy "
                f"{self.accuracy:.3f} [{self.accuracy_ci[0]:.3f}, {self.accuracy_ci[1]:.3f}], "
                f"TPR {self.tpr:.3f}, FPR {self.fpr:.3f}, AUROC {self.auroc:.4f} "
                f"[{self.auroc_ci[0]:.4f}, {self.auroc_ci[1]:.4f}] ({pct:g}% CIs, "
                f"{self.n_in} normal + {self.n_out} outliers)")


def _accuracy(a: np.ndarray, b: np.ndarray, threshold: float, axis: int = -1
              ) -> np.ndarray | float:
    # Vectorised over leading axes like _auroc, for the bootstrap.
    correct = (a >= threshold).sum(axis=axis) + (b < threshold).sum(axis=axis)
    return correct / (a.shape[axis] + b.shape[axis])


def bootstrap_ci(statistic: Callable[[np.ndarray, np.ndarray], float], in_log_p: Scores,
                 out_log_p: Scores, *, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``statistic(in_log_p, out_log_p)``.

    Each replicate resamples the normal points and the outliers separately, with replacement
    and at their own sizes (a stratified bootstrap, so every replicate keeps the mix). The
    interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the replicates. It
    covers the sampling noise of the *test* sets; the threshold is held fixed.
    """
    a = _as_scores(in_log_p, "bootstrap_ci: in_log_p")
    b = _as_scores(out_log_p, "bootstrap_ci: out_log_p")
    return bootstrap_interval(statistic, a, b, n_boot=n_boot, level=level, seed=seed)


def _refit_accuracy(v: np.ndarray, a: np.ndarray, b: np.ndarray, percent: float,
                    axis: int = -1) -> np.ndarray | float:
    """Accuracy with the threshold re-set on the validation scores ``v`` of each replicate
    (vectorised over leading axes; ``axis`` must be the last one)."""
    threshold = np.percentile(v, percent, axis=axis, keepdims=True)
    return _accuracy(a, b, threshold, axis)  # type: ignore[arg-type]


def evaluate_ood(val_log_p: Scores, in_log_p: Scores, out_log_p: Scores, *,
                 percent: float = 5.0, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0, resample_validation: bool = False) -> OODResult:
    """The lecture's recipe, measured.

    Args:
        val_log_p: log-densities of held-out *normal* points; only used to set the threshold.
        in_log_p: log-densities of normal test points (different from the validation points).
        out_log_p: log-densities of outlier test points.
        percent: the validation percentile used as threshold (5 in the lecture).
        n_boot, level, seed: the bootstrap (see :func:`bootstrap_ci`).
        resample_validation: if True, each bootstrap replicate of the accuracy also resamples
            the validation points and re-sets the threshold on them, so ``accuracy_ci`` covers
            the noise of the threshold as well as of the test sets (the AUROC does not use the
            threshold). Either way the model is held fixed: training noise is not covered.
    """
    threshold = percentile_threshold(val_log_p, percent)
    a = _as_scores(in_log_p, "evaluate_ood: in_log_p")
    b = _as_scores(out_log_p, "evaluate_ood: out_log_p")
    return OODResult(
        percent=float(percent), threshold=threshold, n_in=len(a), n_out=len(b),
        accuracy=float(_accuracy(a, b, threshold)), tpr=float((b < threshold).mean()),
        fpr=float((a < threshold).mean()), auroc=auroc(a, b),
        accuracy_ci=(bootstrap_interval(
            lambda v, u, w, axis: _refit_accuracy(v, u, w, float(percent), axis),
            _as_scores(val_log_p, "evaluate_ood: val_log_p"), a, b, n_boot=n_boot, level=level,
            seed=seed, vectorized=True) if resample_validation else
            bootstrap_interval(lambda u, v, axis: _accuracy(u, v, threshold, axis), a,
                               b, n_boot=n_boot, level=level, seed=seed, vectorized=True)),
        auroc_ci=bootstrap_interval(_auroc, a, b, n_boot=n_boot, level=level, seed=seed + 1,
                                    vectorized=True),
        level=level)


def typicality_scores(log_p: Scores, reference_log_p: Scores) -> np.ndarray:
    """Scores for a two-sided (typicality) test: ``-|log p(x) - mean(reference log p)|``.

    A high-dimensional model's typical samples have log-densities close to their mean (minus
    the entropy), so a point whose ``log p`` is unusually *high* is as atypical as one whose
    ``log p`` is unusually low (Nalisnick et al., 2019, "Detecting out-of-distribution inputs
    to deep generative models using typicality"; this is their test with one input at a time).
    The result is used like a log-density: lower means more anomalous, so
    :func:`evaluate_ood` thresholds it at a validation percentile unchanged. Use a
    ``reference`` set of normal points other than the validation and test sets.
    """
    ref = _as_scores(reference_log_p, "typicality_scores: reference_log_p")
    return -np.abs(_as_scores(log_p, "typicality_scores: log_p") - ref.mean())


def uniform_box(n: int, box: tuple[float, float, float, float],
                generator: torch.Generator | None = None, *, seed: int | None = None) -> Tensor:
    """``n`` points uniform on ``box = (xmin, xmax, ymin, ymax)``, ``[n, 2]`` float32."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"uniform_box: n must be a non-negative int, got {n!r}.")
    if len(box) != 4 or not all(math.isfinite(v) for v in box) \
            or not (box[0] < box[1] and box[2] < box[3]):
        raise ValueError(f"uniform_box: box must be (xmin, xmax, ymin, ymax) with xmin < xmax "
                         f"and ymin < ymax, got {box!r}.")
    if generator is not None and seed is not None:
        raise ValueError("uniform_box: pass either generator= or seed=, not both.")
    g = generator if generator is not None else torch.Generator().manual_seed(seed or 0)
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    lo = torch.tensor([box[0], box[2]], dtype=torch.float64)
    width = torch.tensor([box[1] - box[0], box[3] - box[2]], dtype=torch.float64)
    return (lo + u * width).float()


def in_box(x: Tensor, box: tuple[float, float, float, float]) -> Tensor:
    """Boolean ``[n]``: True where the point ``x [n, 2]`` lies in ``box = (xmin, xmax, ymin,
    ymax)`` (edges included), the support of :func:`uniform_box`."""
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"in_box: expected points [n, 2], got shape {list(x.shape)}.")
    return (x[:, 0] >= box[0]) & (x[:, 0] <= box[1]) & (x[:, 1] >= box[2]) & (x[:, 1] <= box[3])


def box_aware_scores(log_p: Tensor, x: Tensor, box: tuple[float, float, float, float],
                     outside: float = 1e3) -> Tensor:
    """Scores ``[n]`` for the Neyman-Pearson test against outliers uniform on ``box``.

    The likelihood ratio normal/outlier is ``|box| p(x)`` inside the box and infinite outside
    it (no outlier lies there), so the most powerful test flags a point only if it is in the
    box *and* its log-density ``log_p [n]`` is low. Points ``x [n, 2]`` outside the box get
    ``outside``, a log-density no threshold from a validation percentile reaches; use the
    result wherever :func:`evaluate_ood` takes log-densities.
    """
    return torch.where(in_box(x, box), log_p, torch.full_like(log_p, outside))


def centred_box(half_width: float, centre: tuple[float, float] = (0.5, 0.25)
                ) -> tuple[float, float, float, float]:
    """The square box of ``half_width`` around ``centre`` (default: the centre of two moons)."""
    if not (isinstance(half_width, (int, float)) and half_width > 0
            and math.isfinite(half_width)):
        raise ValueError(f"centred_box: half_width must be a finite number > 0, got "
                         f"{half_width!r}.")
    cx, cy = centre
    return (cx - half_width, cx + half_width, cy - half_width, cy + half_width)
