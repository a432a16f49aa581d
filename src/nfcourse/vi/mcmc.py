"""The MCMC reference of chapter 11: multi-chain Hamiltonian Monte Carlo, and its diagnostics.

:func:`hmc` runs ``C`` chains at once (one batched gradient per leapfrog step, float64). Each
iteration draws a momentum ``p ~ N(0, M)`` with a diagonal mass matrix ``M``, follows the
Hamiltonian ``H = -log pi(x) + p^T M^-1 p / 2`` for ``L`` leapfrog steps of size ``eps`` (the
step jittered by up to +-10% per iteration, so no chain locks onto a periodic orbit), and
accepts the end point with probability ``min(1, exp(H_start - H_end))``: the leapfrog map is
volume-preserving and reversible, so this Metropolis correction leaves ``pi`` exactly
invariant whatever the step size (Duane et al. 1987; Neal 2011).

Warm-up (discarded) tunes, per chain, the step size by dual averaging towards a target mean
acceptance probability (Hoffman & Gelman 2014, section 3.2), and once, from the pooled
draws of its middle part, the diagonal of ``M^-1`` (the posterior variances, shrunk slightly
towards a small constant as Stan does), after which dual averaging restarts. After warm-up
everything is frozen, so the draws are those of a fixed, valid Markov kernel.

Diagnostics, computed on the kept draws ``[C, N, D]``:

* :func:`split_rhat` -- the potential scale reduction of Gelman et al. (BDA3, 11.4) on
  split chains (each chain cut in two halves, so a drifting chain is caught too): about 1
  when all chains sample the same distribution; above 1.01 means "run longer".
* :func:`effective_sample_size` -- the multi-chain ESS of BDA3 (11.5): autocorrelations
  from the chains' pooled variance, summed over Geyer's initial monotone sequence.
* :func:`mc_standard_error` -- ``sd / sqrt(ESS)`` of a posterior mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nfcourse.core.validation import check_count, check_tensor

__all__ = ["MCMCRun", "hmc", "split_rhat", "effective_sample_size", "mc_standard_error"]

LogProb = Callable[[Tensor], Tensor]


@dataclass
class MCMCRun:
    """Kept draws ``samples [C, N, D]`` (float64), the final per-chain ``step_size [C]``, the
    ``inv_metric [D]`` (the diagonal of ``M^-1``), the mean acceptance probability of the
    kept iterations, the count of divergent transitions (energy error above 1000 nats or not
    finite) among them, and ``leapfrog`` steps per iteration."""

    samples: Tensor
    step_size: Tensor
    inv_metric: Tensor
    acceptance: float
    divergences: int
    leapfrog: int

    def flat(self) -> Tensor:
        """All chains' draws pooled: ``[C * N, D]``."""
        return self.samples.reshape(-1, self.samples.shape[-1])

    def rhat(self) -> Tensor:
        return split_rhat(self.samples)

    def ess(self) -> Tensor:
        return effective_sample_size(self.samples)


def _value_and_grad(log_prob: LogProb, x: Tensor) -> tuple[Tensor, Tensor]:
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        lp = log_prob(xg)
        (g,) = torch.autograd.grad(lp.sum(), xg)
    return lp.detach(), g


class _DualAveraging:
    """Hoffman & Gelman's dual averaging of ``log eps``, one per chain."""

    def __init__(self, eps: Tensor, target: float, gamma: float = 0.05, t0: float = 10.0,
                 kappa: float = 0.75) -> None:
        self.target, self.gamma, self.t0, self.kappa = target, gamma, t0, kappa
        self.restart(eps)

    def restart(self, eps: Tensor) -> None:
        self.mu = torch.log(10 * eps)
        self.h_bar = torch.zeros_like(eps)
        self.log_eps_bar = torch.zeros_like(eps)
        self.m = 0

    def update(self, accept_prob: Tensor) -> Tensor:
        self.m += 1
        m = self.m
        eta = 1.0 / (m + self.t0)
        self.h_bar = (1 - eta) * self.h_bar + eta * (self.target - accept_prob)
        log_eps = self.mu - math.sqrt(m) / self.gamma * self.h_bar
        w = m ** (-self.kappa)
        self.log_eps_bar = w * log_eps + (1 - w) * self.log_eps_bar
        return log_eps.exp()

    def final(self) -> Tensor:
        return self.log_eps_bar.exp()


def hmc(log_prob: LogProb, x0: Tensor, *, warmup: int = 1000, draws: int = 1000,
        leapfrog: int = 10, step_size: float = 0.1, target_accept: float = 0.8,
        adapt_metric: bool = True, seed: int = 0) -> MCMCRun:
    """Multi-chain HMC with warm-up adaptation (see the module docstring).

    Args:
        log_prob: the unnormalised log-density, ``[C, D] -> [C]`` (rows independent), written
            in torch so autograd gives its gradient.
        x0: one starting point per chain, ``[C, D]`` (converted to float64). Start the chains
            dispersed (e.g. prior draws) so that :func:`split_rhat` can detect
            non-convergence.
        warmup, draws: iterations discarded while adapting, and kept afterwards.
        leapfrog: leapfrog steps per iteration.
        step_size: the initial step size (adaptation moves it).
        target_accept: the mean acceptance probability dual averaging aims for.
        adapt_metric: estimate the diagonal mass matrix during warm-up.
        seed: seeds the momenta, jitter and accept decisions.
    """
    x = check_tensor(x0, None, name="hmc(x0)").detach().to(torch.float64).clone()
    if x.dim() != 2:
        raise ValueError(f"hmc(x0): expected one starting point per chain, shape [C, D], got "
                         f"{list(x.shape)}.")
    warmup = check_count(warmup, "hmc(warmup)", "warm-up iterations")
    draws = check_count(draws, "hmc(draws)", "kept iterations")
    leapfrog = check_count(leapfrog, "hmc(leapfrog)", "leapfrog steps")
    if draws < 4 or leapfrog < 1:
        raise ValueError(f"hmc: need draws >= 4 (for split diagnostics) and leapfrog >= 1, got "
                         f"draws={draws}, leapfrog={leapfrog}.")
    if not (0 < target_accept < 1 and step_size > 0):
        raise ValueError(f"hmc: target_accept must be in (0, 1) and step_size > 0, got "
                         f"{target_accept} and {step_size}.")
    g = torch.Generator().manual_seed(seed)
    chains, dim = x.shape
    lp, grad = _value_and_grad(log_prob, x)
    if not bool(torch.isfinite(lp).all()):
        raise ValueError("hmc(x0): log_prob is not finite at some starting point; start the "
                         "chains where the density is positive.")
    inv_metric = torch.ones(dim, dtype=torch.float64)
    eps = torch.full((chains,), float(step_size), dtype=torch.float64)
    dual = _DualAveraging(eps, target_accept)
    # metric window: the middle of warm-up (after a fast start, before a final step-size phase)
    win_start, win_end = int(0.15 * warmup), int(0.75 * warmup)
    window: list[Tensor] = []
    kept = torch.empty(chains, draws, dim, dtype=torch.float64)
    accept_sum, divergences = 0.0, 0
    for it in range(warmup + draws):
        jitter = 1 + 0.1 * (2 * torch.rand(chains, generator=g, dtype=torch.float64) - 1)
        h = (eps * jitter)[:, None]
        p = torch.randn(chains, dim, generator=g, dtype=torch.float64) / inv_metric.sqrt()
        h0 = -lp + 0.5 * (p**2 * inv_metric).sum(dim=1)
        xn, pn, gn = x, p + 0.5 * h * grad, grad
        for step in range(leapfrog):
            xn = xn + h * pn * inv_metric
            lpn, gn = _value_and_grad(log_prob, xn)
            pn = pn + (h if step < leapfrog - 1 else 0.5 * h) * gn
        h1 = -lpn + 0.5 * (pn**2 * inv_metric).sum(dim=1)
        delta = h0 - h1
        delta = torch.where(torch.isfinite(delta), delta, torch.full_like(delta, -math.inf))
        prob = torch.exp(torch.clamp(delta, max=0.0))
        accept = torch.rand(chains, generator=g, dtype=torch.float64) < prob
        x = torch.where(accept[:, None], xn, x)
        lp = torch.where(accept, lpn, lp)
        grad = torch.where(accept[:, None], gn, grad)
        if it < warmup:
            eps = dual.update(prob)
            if adapt_metric and win_start <= it < win_end:
                window.append(x.clone())
            if adapt_metric and it == win_end - 1 and window:
                pooled = torch.cat(window)
                n = pooled.shape[0]
                inv_metric = (n / (n + 5.0)) * pooled.var(dim=0) + 1e-3 * 5.0 / (n + 5.0)
                dual.restart(eps)
            if it == warmup - 1:
                eps = dual.final()
        else:
            kept[:, it - warmup] = x
            accept_sum += float(prob.mean())
            divergences += int((~torch.isfinite(h1) | (-delta > 1000)).sum())
    return MCMCRun(kept, eps, inv_metric, accept_sum / draws, divergences, leapfrog)


# ------------------------------------------------------------------------------ diagnostics


def _chains(samples: object, who: str) -> np.ndarray:
    a = samples.detach().cpu().double().numpy() if isinstance(samples, Tensor) \
        else np.asarray(samples, dtype=np.float64)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"{who}: expected draws of shape [chains, draws] or [chains, draws, D], "
                         f"got {list(a.shape)}.")
    if a.shape[1] < 4:
        raise ValueError(f"{who}: need at least 4 draws per chain (two halves of 2), got "
                         f"{a.shape[1]}.")
    if not np.isfinite(a).all():
        raise ValueError(f"{who}: the draws contain NaN or inf.")
    return a


def _split(a: np.ndarray) -> np.ndarray:
    """Cut every chain in two halves (dropping the middle draw of an odd length)."""
    half = a.shape[1] // 2
    return np.concatenate([a[:, :half], a[:, a.shape[1] - half:]], axis=0)


def split_rhat(samples: Tensor | np.ndarray) -> Tensor:
    """Split-R-hat per coordinate, ``[D]`` (a 2-D input ``[C, N]`` gives ``[1]``).

    With ``m`` split chains of ``n`` draws, ``W`` the mean within-chain variance and ``B / n``
    the variance of the chain means: ``R-hat = sqrt(((n - 1) / n W + B / n) / W)``.
    """
    a = _split(_chains(samples, "split_rhat"))
    n = a.shape[1]
    w = a.var(axis=1, ddof=1).mean(axis=0)
    b_over_n = a.mean(axis=1).var(axis=0, ddof=1)
    if np.any(w <= 0):
        raise ValueError("split_rhat: a coordinate does not move within some chain (zero "
                         "variance); the sampler is stuck.")
    return torch.from_numpy(np.sqrt(((n - 1) / n * w + b_over_n) / w))


def _autocovariance(x: np.ndarray) -> np.ndarray:
    """Autocovariance of each chain at every lag (biased, 1/n), by FFT: ``[m, n] -> [m, n]``."""
    n = x.shape[1]
    c = x - x.mean(axis=1, keepdims=True)
    size = 2 ** int(math.ceil(math.log2(2 * n)))
    f = np.fft.rfft(c, n=size, axis=1)
    return np.fft.irfft(f * np.conj(f), n=size, axis=1)[:, :n] / n


def effective_sample_size(samples: Tensor | np.ndarray) -> Tensor:
    """Multi-chain effective sample size per coordinate, ``[D]``, on split chains.

    ``rho_t = 1 - (W - mean_chains(acov_t)) / var+`` combines the chains' autocovariances with
    the between-chain variance (so chains that disagree get a small ESS); the sum of
    ``rho_t`` runs over Geyer's initial monotone positive sequence of pair sums
    ``rho_{2k} + rho_{2k+1}``. ``ESS = m n / tau`` with ``tau = -1 + 2 sum_k P_k``, capped at
    ``m n log10(m n)`` as Stan does for antithetic chains.
    """
    a = _split(_chains(samples, "effective_sample_size"))
    m, n, d = a.shape
    out = np.empty(d)
    for j in range(d):
        x = a[:, :, j]
        acov = _autocovariance(x)
        w = x.var(axis=1, ddof=1).mean()
        var_plus = (n - 1) / n * w + x.mean(axis=1).var(ddof=1)
        if var_plus <= 0:
            raise ValueError("effective_sample_size: a coordinate never moves; the sampler is "
                             "stuck.")
        rho = 1 - (w - acov.mean(axis=0)) / var_plus
        rho[0] = 1.0
        pairs = []
        for k in range(0, n - 1, 2):
            p = rho[k] + rho[k + 1]
            if p <= 0:
                break
            pairs.append(min(p, pairs[-1]) if pairs else p)   # monotone
        tau = -1 + 2 * sum(pairs) if pairs else 1.0
        total = m * n
        out[j] = min(total / max(tau, 1e-12), total * math.log10(total))
    return torch.from_numpy(out)


def mc_standard_error(samples: Tensor | np.ndarray) -> Tensor:
    """Monte-Carlo standard error of the posterior mean per coordinate: ``sd / sqrt(ESS)``."""
    a = _chains(samples, "mc_standard_error")
    sd = a.reshape(-1, a.shape[-1]).std(axis=0, ddof=1)
    return torch.from_numpy(sd) / effective_sample_size(a).sqrt()
