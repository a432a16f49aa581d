"""Langevin dynamics, the independent reference for the JKO scheme, and sample distances.

The Fokker-Planck equation ``dp/dt = div(p grad(log p + U))`` is the law of the overdamped
Langevin SDE ``dX = -grad U(X) dt + sqrt(2) dW``. Simulating many independent particles of
the SDE therefore gives samples of the same path of densities ``p_t`` that the JKO scheme
approximates, with a completely different method (no maps, no densities):

* ULA (unadjusted Langevin): ``x <- x - h grad U(x) + sqrt(2 h) xi``; time ``n h`` after
  ``n`` steps; its bias is ``O(h)`` (for a Gaussian target its stationary variance is
  ``sigma^2 / (1 - h / (2 sigma^2))`` instead of ``sigma^2``).
* MALA adds a Metropolis-Hastings accept/reject, which makes ``pi`` exactly stationary (but the
  rejected moves slow the dynamics, so it is a sampler of ``pi`` rather than of ``p_t``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nfcourse.jko.targets import Target
from nfcourse.core.validation import check_tensor


@dataclass
class LangevinRun:
    """Final particles ``x [N, D]``, snapshots ``{step: [N, D]}`` and the MALA acceptance rate
    (1.0 for ULA). ``step_size`` is ``h``; snapshot ``n`` is at time ``n * h``."""

    x: Tensor
    step_size: float
    snapshots: dict[int, Tensor] = field(default_factory=dict)
    acceptance: float = 1.0


def _mala_log_q(to: Tensor, frm: Tensor, grad_frm: Tensor, h: float) -> Tensor:
    """Log-density (up to a constant) of proposing ``to`` from ``frm``: ``N(frm - h grad, 2h I)``.
    """
    return -((to - frm + h * grad_frm) ** 2).sum(dim=1) / (4 * h)


def langevin(target: Target, x0: Tensor, step_size: float, steps: int, *,
             generator: torch.Generator | None = None, mala: bool = False,
             snapshot_at: Sequence[int] = ()) -> LangevinRun:
    """Run ``steps`` Langevin steps of size ``h = step_size`` from particles ``x0 [N, D]``.

    Args:
        target: supplies ``U`` (its gradient by autograd).
        mala: add the Metropolis-Hastings correction (MALA) instead of plain ULA.
        snapshot_at: step counts at which to keep a copy of the particles.
    Returns a :class:`LangevinRun`; particles keep ``x0``'s dtype.
    """
    check_tensor(x0, (target.dim,), name="langevin(x0)")
    if not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"langevin: step_size must be > 0, got {step_size!r}.")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"langevin: steps must be a non-negative int, got {steps!r}.")
    g = generator or torch.Generator().manual_seed(0)
    h = float(step_size)
    x = x0.detach().clone()
    grad = target.grad_potential(x)
    energy = target.potential(x).detach() if mala else None
    accepted = 0
    run = LangevinRun(x, h)
    if 0 in snapshot_at:
        run.snapshots[0] = x.clone()
    for n in range(1, steps + 1):
        noise = torch.randn(x.shape, generator=g, dtype=x.dtype)
        proposal = x - h * grad + math.sqrt(2 * h) * noise
        grad_prop = target.grad_potential(proposal)
        if mala:
            assert energy is not None
            energy_prop = target.potential(proposal).detach()
            log_ratio = (energy - energy_prop + _mala_log_q(x, proposal, grad_prop, h)
                         - _mala_log_q(proposal, x, grad, h))
            u = torch.rand(x.shape[0], generator=g, dtype=x.dtype)
            accept = torch.log(u) < log_ratio
            accepted += int(accept.sum())
            x = torch.where(accept[:, None], proposal, x)
            grad = torch.where(accept[:, None], grad_prop, grad)
            energy = torch.where(accept, energy_prop, energy)
        else:
            x, grad = proposal, grad_prop
        if n in snapshot_at:
            run.snapshots[n] = x.clone()
    run.x = x
    if mala and steps > 0:
        run.acceptance = accepted / (steps * x.shape[0])
    return run


