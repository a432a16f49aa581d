"""Bayesian logistic regression: a real posterior for chapter 11.

Model: ``y_i ~ Bernoulli(sigmoid(x_i . beta))`` with ``x_i`` standardised features and a
leading 1 (the intercept), and a Gaussian prior ``beta ~ N(0, s^2 I)``. The log-joint

    log p(beta, y) = sum_i log sigmoid((2 y_i - 1) x_i . beta) + log N(beta; 0, s^2 I)

is what both the MCMC reference and the variational flow use (its gradient by autograd).
The held-out score of a set of posterior draws ``beta_1..beta_S`` is the log posterior
predictive density per test point, ``mean_j log mean_s p(y_j | x_j, beta_s)``.

:func:`breast_cancer` loads scikit-learn's copy of the Wisconsin diagnostic breast-cancer data
(569 cases, bundled with scikit-learn, no download), keeps a few features, splits it with a
seed and standardises with the training split's statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nfcourse.core.validation import check_tensor

__all__ = ["LogisticData", "breast_cancer", "BayesianLogisticRegression",
           "BREAST_CANCER_FEATURES"]

#: The features kept by default: eight of the ten "mean" measurements (perimeter and area are
#: left out: with the radius they are nearly one variable).
BREAST_CANCER_FEATURES: tuple[str, ...] = (
    "mean radius", "mean texture", "mean smoothness", "mean compactness", "mean concavity",
    "mean concave points", "mean symmetry", "mean fractal dimension")


@dataclass(frozen=True)
class LogisticData:
    """Design matrices with the intercept column first (float64) and 0/1 labels (float64)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    names: tuple[str, ...]

    @property
    def dim(self) -> int:
        return self.x_train.shape[1]


def breast_cancer(features: Sequence[str] = BREAST_CANCER_FEATURES, n_train: int = 300,
                  seed: int = 0) -> LogisticData:
    """The breast-cancer data with the named features: ``n_train`` random training cases (by
    ``seed``), the rest held out; standardised by the training mean and s.d.; label 1 =
    malignant. Raises ``ValueError`` naming the valid features for an unknown one."""
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer()
    names = [str(n) for n in raw.feature_names]
    unknown = [f for f in features if f not in names]
    if unknown:
        raise ValueError(f"breast_cancer: unknown features {unknown}; choose from {names}.")
    if not 10 <= n_train <= len(raw.target) - 10:
        raise ValueError(f"breast_cancer: n_train must leave at least 10 cases on each side, "
                         f"got {n_train} of {len(raw.target)}.")
    cols = [names.index(f) for f in features]
    x = raw.data[:, cols].astype(np.float64)
    y = (raw.target == 0).astype(np.float64)  # scikit-learn codes malignant as 0
    order = np.random.default_rng(seed).permutation(len(y))
    tr, te = order[:n_train], order[n_train:]
    mu, sd = x[tr].mean(axis=0), x[tr].std(axis=0)
    z = (x - mu) / sd
    design = torch.from_numpy(np.concatenate([np.ones((len(y), 1)), z], axis=1))
    labels = torch.from_numpy(y)
    return LogisticData(design[tr], labels[tr], design[te], labels[te],
                        ("intercept", *features))


class BayesianLogisticRegression:
    """The posterior of logistic regression on ``(x [N, D], y [N])`` with prior ``N(0, s^2 I)``.

    ``log_joint(beta [B, D]) -> [B]`` works in the dtype of ``beta`` (float32 for a flow,
    float64 for MCMC); calling the object is ``log_joint``.
    """

    def __init__(self, x: Tensor, y: Tensor, prior_scale: float = 1.0) -> None:
        x = check_tensor(x, None, name="BayesianLogisticRegression(x)")
        if x.dim() != 2:
            raise ValueError(f"BayesianLogisticRegression: x must be [N, D], got {list(x.shape)}.")
        y = torch.as_tensor(y)
        if y.shape != (x.shape[0],) or not bool(((y == 0) | (y == 1)).all()):
            raise ValueError(f"BayesianLogisticRegression: y must hold N = {x.shape[0]} labels "
                             "in {0, 1}; convert booleans with y.double().")
        if not (math.isfinite(prior_scale) and prior_scale > 0):
            raise ValueError(f"BayesianLogisticRegression: prior_scale must be > 0, got "
                             f"{prior_scale}.")
        self.x = x.double()
        self.sign = (2 * y.double() - 1)
        self.prior_scale = float(prior_scale)
        self._cache: dict[torch.dtype, tuple[Tensor, Tensor]] = {}

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    def _data(self, like: Tensor) -> tuple[Tensor, Tensor]:
        key = like.dtype
        if key not in self._cache or self._cache[key][0].device != like.device:
            self._cache[key] = (self.x.to(like), self.sign.to(like))
        return self._cache[key]

    def log_likelihood(self, beta: Tensor) -> Tensor:
        """``sum_i log p(y_i | x_i, beta)``: ``[B, D] -> [B]``."""
        x, sign = self._data(beta)
        return F.logsigmoid(sign * (beta @ x.T)).sum(dim=1)

    def log_prior(self, beta: Tensor) -> Tensor:
        s = self.prior_scale
        return (-0.5 * (beta / s) ** 2).sum(dim=1) - self.dim * (math.log(s) +
                                                                 0.5 * math.log(2 * math.pi))

    def log_joint(self, beta: Tensor) -> Tensor:
        """``log p(beta) + log p(y | beta)``: ``[B, D] -> [B]``."""
        if beta.dim() != 2 or beta.shape[1] != self.dim:
            raise ValueError(f"log_joint: expected coefficients of shape [B, {self.dim}], got "
                             f"{list(beta.shape)}.")
        return self.log_likelihood(beta) + self.log_prior(beta)

    __call__ = log_joint

    def grad_log_joint(self, beta: Tensor) -> Tensor:
        """``d log_joint / d beta`` by autograd: ``[B, D] -> [B, D]``."""
        with torch.enable_grad():
            b = beta.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.log_joint(b).sum(), b)
        return g

    def prior_sample(self, n: int, generator: torch.Generator) -> Tensor:
        return self.prior_scale * torch.randn(n, self.dim, generator=generator,
                                              dtype=torch.float64)

    @staticmethod
    @torch.no_grad()
    def predictive_log_lik(beta: Tensor, x: Tensor, y: Tensor) -> float:
        """Held-out log posterior predictive per point, ``mean_j log mean_s p(y_j | x_j,
        beta_s)``, from posterior draws ``beta [S, D]`` (float64)."""
        b = beta.detach().double().cpu()
        sign = (2 * torch.as_tensor(y).double() - 1)
        log_p = F.logsigmoid(sign * (b @ x.double().T))          # [S, M]
        return float((torch.logsumexp(log_p, dim=0) - math.log(b.shape[0])).mean())
