"""Closed forms for Gaussians: the JKO step, the Ornstein-Uhlenbeck flow, W2 and KL.

Setting. The target is ``pi = N(mu, Sigma)``, i.e. the potential
``U(x) = (x - mu)^T Sigma^-1 (x - mu) / 2``, and the free energy is
``F[p] = KL(p || pi) = E_p[log p + U] + log Z``. Its Wasserstein gradient flow is the
Fokker-Planck equation ``dp/dt = div(p grad(log p + U))`` of the Ornstein-Uhlenbeck process
``dX = -Sigma^-1 (X - mu) dt + sqrt(2) dW``.

**The JKO step** ``p_{k+1} = argmin_p F[p] + W2^2(p, p_k) / (2 tau)`` from a Gaussian
``p_k = N(m_k, S_k)`` is again Gaussian (an affine optimal map satisfies the step's optimality
condition, and the step's objective is strictly convex, so that Gaussian is the minimiser).
Within Gaussians, with the mean and covariance as unknowns:

* Mean (any covariances). ``F`` contributes ``(m - mu)^T Sigma^-1 (m - mu) / 2`` and ``W2^2``
  contributes ``|m - m_k|^2``; setting the gradient to zero gives
  ``(tau I + Sigma) m = tau mu + Sigma m_k``, in one dimension
  ``m = (tau mu + sigma^2 m_k) / (tau + sigma^2)``.
* Spread (commuting ``S_k`` and ``Sigma``). In a common eigenbasis everything decouples; along
  one eigen-direction with target variance ``sigma^2`` and current standard deviation
  ``s_k``, the part of the objective that depends on the new standard deviation ``s`` is
  ``-log s + s^2 / (2 sigma^2) + (s - s_k)^2 / (2 tau)`` (entropy, potential, and the spread
  part of ``W2^2`` between Gaussians). Its derivative vanishes where
  ``(tau + sigma^2) s^2 - sigma^2 s_k s - sigma^2 tau = 0``; the product of the roots is
  negative, so exactly one is positive:
  ``s = (sigma^2 s_k + sqrt(sigma^4 s_k^2 + 4 sigma^2 tau (tau + sigma^2))) / (2 (tau + sigma^2))``.
  The new covariance has the same eigenvectors, so the iterates keep commuting with ``Sigma``.

Since ``W2`` between one-dimensional Gaussians is the Euclidean distance between ``(m, s)``
pairs, the step is exactly the implicit Euler step of the ODE ``(m, s)' = -grad F(m, s)``,
i.e. ``m' = -(m - mu) / sigma^2`` and ``s' = 1/s - s/sigma^2``; the latter is
``v' = 2 - 2 v/sigma^2``
for ``v = s^2``, the OU variance equation. So JKO here has global error ``O(tau)``.

**The OU (Fokker-Planck) solution** from ``N(m_0, S_0)`` stays Gaussian with
``m(t) = mu + E (m_0 - mu)`` and ``S(t) = Sigma + E (S_0 - Sigma) E`` where
``E = exp(-t Sigma^-1)``; these solve ``m' = -Sigma^-1 (m - mu)`` and
``S' = -Sigma^-1 S - S Sigma^-1 + 2 I``, for any (not necessarily commuting) covariances.

Everything here works in float64 and on tensors; means are ``[D]``, covariances ``[D, D]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# A fixed irrational weight: the eigenvectors of Sigma + w S diagonalise both matrices when
# they commute, unless the weight happens to merge two distinct joint eigenvalue pairs.
_MIX = (math.sqrt(5) - 1) / 2


# --------------------------------------------------------------------------- validation


def _as_float64(x: object, name: str) -> Tensor:
    if isinstance(x, Tensor):
        t = x.to(torch.float64)  # keeps the autograd graph, so closed forms can be differentiated
    else:
        try:
            t = torch.as_tensor(x, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name}: expected numbers or a tensor, "
                            f"got {type(x).__name__}.") from err
    if not bool(torch.isfinite(t.detach()).all()):
        raise ValueError(f"{name}: contains NaN or inf; pass finite values.")
    return t


def _check_positive(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}.")
    return value


def check_mean_cov(mean: object, cov: object, name: str = "Gaussian") -> tuple[Tensor, Tensor]:
    """Validate a mean ``[D]`` and an SPD covariance ``[D, D]``; return them as float64.

    Raises ``ValueError`` naming the problem: wrong shapes, asymmetric or non-positive-definite
    covariance, non-finite entries.
    """
    m = _as_float64(mean, f"{name} mean")
    c = _as_float64(cov, f"{name} covariance")
    if m.dim() != 1:
        raise ValueError(f"{name} mean: expected shape [D], got {list(m.shape)}; "
                         "for one dimension pass e.g. torch.tensor([1.0]).")
    d = m.shape[0]
    if c.shape != (d, d):
        raise ValueError(f"{name} covariance: expected shape [{d}, {d}] to match the mean, got "
                         f"{list(c.shape)}; a variance v in one dimension is [[v]].")
    if not torch.allclose(c, c.T, rtol=1e-10, atol=1e-12):
        raise ValueError(f"{name} covariance is not symmetric; symmetrise it with (C + C.T) / 2.")
    smallest = float(torch.linalg.eigvalsh(c.detach()).min())
    if smallest <= 0:
        raise ValueError(f"{name} covariance is not positive definite (smallest eigenvalue "
                         f"{smallest:.3e}); a Gaussian density needs every variance > 0.")
    return m, c


def sqrtm_spd(c: Tensor) -> Tensor:
    """Symmetric square root of an SPD matrix ``[D, D]`` (eigen-decomposition)."""
    vals, vecs = torch.linalg.eigh(c)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


# --------------------------------------------------------------------------- 1-D / diagonal


def jko_step_1d(m: Tensor | float, s: Tensor | float, tau: float, mu: Tensor | float = 0.0,
                sigma: Tensor | float = 1.0) -> tuple[Tensor, Tensor]:
    """One exact JKO step for ``F = KL(p || N(mu, sigma^2))`` from ``p_k = N(m, s^2)``.

    Elementwise, so it also serves diagonal covariances (each coordinate independently): all
    arguments broadcast against each other. ``s`` and ``sigma`` are standard deviations.
    Returns the new ``(mean, std)`` as float64 tensors. See the module docstring for the
    derivation.
    """
    tau = _check_positive(tau, "tau (the JKO time step)")
    m_t, s_t = _as_float64(m, "m"), _as_float64(s, "s")
    mu_t, sg_t = _as_float64(mu, "mu"), _as_float64(sigma, "sigma")
    if not bool((s_t > 0).all()) or not bool((sg_t > 0).all()):
        raise ValueError("jko_step_1d: standard deviations s and sigma must be > 0 "
                         "(pass standard deviations, not log-stds).")
    var = sg_t**2
    new_m = (tau * mu_t + var * m_t) / (tau + var)
    b = var * s_t
    new_s = (b + torch.sqrt(b**2 + 4 * var * tau * (tau + var))) / (2 * (tau + var))
    return new_m, new_s


def ou_1d(m0: Tensor | float, s0: Tensor | float, t: Tensor | float, mu: Tensor | float = 0.0,
          sigma: Tensor | float = 1.0) -> tuple[Tensor, Tensor]:
    """Exact OU / Fokker-Planck solution in one dimension (elementwise): ``(mean(t), std(t))``.

    ``mean = mu + (m0 - mu) e^{-t/sigma^2}``, ``var = sigma^2 + (s0^2 - sigma^2) e^{-2t/sigma^2}``.
    ``t`` may require grad (to check the ODE by autograd).
    """
    t_t = _as_float64(t, "t")
    if not bool((t_t >= 0).all()):
        raise ValueError("ou_1d: time t must be >= 0.")
    m0_t, s0_t = _as_float64(m0, "m0"), _as_float64(s0, "s0")
    mu_t, sg_t = _as_float64(mu, "mu"), _as_float64(sigma, "sigma")
    var = sg_t**2
    decay = torch.exp(-t_t / var)
    return mu_t + (m0_t - mu_t) * decay, torch.sqrt(var + (s0_t**2 - var) * decay**2)


# --------------------------------------------------------------------------- D dimensions


def joint_eigenbasis(a: Tensor, b: Tensor, rtol: float = 1e-8) -> Tensor:
    """An orthogonal ``Q [D, D]`` with ``Q^T a Q`` and ``Q^T b Q`` both diagonal.

    Exists iff the symmetric matrices ``a`` and ``b`` commute. Raises ``ValueError`` otherwise.
    """
    scale = float(a.abs().max() + b.abs().max())
    if float((a @ b - b @ a).abs().max()) > rtol * scale**2:
        raise ValueError(
            "the covariances do not commute (S Sigma != Sigma S), so the JKO step has no "
            "per-eigen-direction closed form; use commuting (e.g. both diagonal) covariances, or "
            "solve the step numerically (flow_jko with an affine map).")
    _, q = torch.linalg.eigh(a / a.abs().max() + _MIX * b / b.abs().max())
    for m in (a, b):
        rot = q.T @ m @ q
        off = rot - torch.diag(torch.diagonal(rot))
        if float(off.abs().max()) > 1e-7 * scale:
            raise ValueError("joint_eigenbasis: could not diagonalise both matrices (a degenerate "
                             "mix of eigenvalues); perturb one of them slightly.")
    return q


def gaussian_jko_step(mean: object, cov: object, tau: float, target_mean: object,
                      target_cov: object) -> tuple[Tensor, Tensor]:
    """One exact JKO step for ``F = KL(p || N(target_mean, target_cov))`` from ``N(mean, cov)``.

    Shapes: means ``[D]``, covariances ``[D, D]``; ``cov`` and ``target_cov`` must commute
    (e.g. both diagonal, or one isotropic). Returns ``(new_mean [D], new_cov [D, D])`` in float64.
    The mean update holds for any covariances; the covariance update is
    :func:`jko_step_1d` applied along each common eigen-direction.
    """
    tau = _check_positive(tau, "tau (the JKO time step)")
    m, s = check_mean_cov(mean, cov, "current")
    mu, sig = check_mean_cov(target_mean, target_cov, "target")
    if m.shape != mu.shape:
        raise ValueError(f"current and target dimensions differ: {m.shape[0]} vs {mu.shape[0]}.")
    d = m.shape[0]
    new_mean = torch.linalg.solve(tau * torch.eye(d, dtype=torch.float64) + sig,
                                  tau * mu + sig @ m)
    q = joint_eigenbasis(sig, s)
    var_target = torch.diagonal(q.T @ sig @ q)
    std_now = torch.diagonal(q.T @ s @ q).sqrt()
    _, std_next = jko_step_1d(0.0, std_now, tau, 0.0, var_target.sqrt())
    new_cov = (q * std_next**2) @ q.T
    return new_mean, 0.5 * (new_cov + new_cov.T)


def gaussian_jko_path(mean: object, cov: object, tau: float, steps: int, target_mean: object,
                      target_cov: object) -> tuple[Tensor, Tensor]:
    """``steps`` JKO steps: ``(means [steps+1, D], covs [steps+1, D, D])``, iterate 0 first."""
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}.")
    m, c = check_mean_cov(mean, cov, "initial")
    means, covs = [m], [c]
    for _ in range(steps):
        m, c = gaussian_jko_step(m, c, tau, target_mean, target_cov)
        means.append(m)
        covs.append(c)
    return torch.stack(means), torch.stack(covs)


def ou_solution(mean0: object, cov0: object, t: float | Tensor, target_mean: object,
                target_cov: object) -> tuple[Tensor, Tensor]:
    """Exact Fokker-Planck (OU) solution at time ``t`` from ``N(mean0, cov0)``.

    ``dX = -Sigma^-1 (X - mu) dt + sqrt(2) dW`` with ``Sigma = target_cov``, ``mu = target_mean``.
    Returns ``(mean(t) [D], cov(t) [D, D])``; any SPD covariances (no commuting needed).
    ``t`` may be a 0-d tensor that requires grad, to differentiate in time.
    """
    m0, s0 = check_mean_cov(mean0, cov0, "initial")
    mu, sig = check_mean_cov(target_mean, target_cov, "target")
    if m0.shape != mu.shape:
        raise ValueError(f"initial and target dimensions differ: {m0.shape[0]} vs {mu.shape[0]}.")
    t_t = _as_float64(t, "t")
    if t_t.dim() != 0 or float(t_t.detach()) < 0:
        raise ValueError(f"t must be a single time >= 0, got {t_t.tolist()}.")
    e = torch.linalg.matrix_exp(-t_t * torch.linalg.inv(sig))
    return mu + e @ (m0 - mu), sig + e @ (s0 - sig) @ e.T


def w2_gaussian(mean1: object, cov1: object, mean2: object, cov2: object) -> Tensor:
    """2-Wasserstein distance between ``N(mean1, cov1)`` and ``N(mean2, cov2)`` (float64 scalar).

    ``W2^2 = |m1 - m2|^2 + tr(S1 + S2 - 2 (S2^1/2 S1 S2^1/2)^1/2)`` (the Bures term).
    """
    m1, s1 = check_mean_cov(mean1, cov1, "first")
    m2, s2 = check_mean_cov(mean2, cov2, "second")
    if m1.shape != m2.shape:
        raise ValueError(f"dimensions differ: {m1.shape[0]} vs {m2.shape[0]}.")
    r = sqrtm_spd(s2)
    cross = sqrtm_spd(r @ s1 @ r)
    bures = torch.trace(s1 + s2 - 2 * cross).clamp_min(0)
    return torch.sqrt(((m1 - m2) ** 2).sum() + bures)


def kl_gaussian(mean1: object, cov1: object, mean2: object, cov2: object) -> Tensor:
    """``KL(N(mean1, cov1) || N(mean2, cov2))`` in nats (float64 scalar): the free energy."""
    m1, s1 = check_mean_cov(mean1, cov1, "first")
    m2, s2 = check_mean_cov(mean2, cov2, "second")
    if m1.shape != m2.shape:
        raise ValueError(f"dimensions differ: {m1.shape[0]} vs {m2.shape[0]}.")
    d = m1.shape[0]
    inv2 = torch.linalg.inv(s2)
    diff = m2 - m1
    return 0.5 * (torch.trace(inv2 @ s1) + diff @ inv2 @ diff - d
                  + torch.logdet(s2) - torch.logdet(s1))
