"""Sampling a trained velocity field, its exact log-likelihood, and reflow pairs.

Everything integrates ``dx/dt = v(t, x)`` with the solvers of :mod:`nfcourse.ode.solvers`
(hand-written Euler / midpoint / Heun / RK4 with a fixed number of steps, or torchdiffeq's
adaptive dopri5), from ``t = 0`` (noise) to ``t = 1`` (data). The log-likelihood reuses
:class:`nfcourse.flows.continuous.ContinuousFlow`: the instantaneous change of variables with the exact
(autograd) divergence, integrated from data back to noise.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nfcourse.flows import ContinuousFlow
from nfcourse.ode import SolverSpec, fixed_step_solve, solve
from nfcourse.core.distributions import StandardNormal
from nfcourse.core.model import FlowModel


def solver(steps: int | None = None, method: str = "euler", rtol: float = 1e-5,
           atol: float = 1e-5) -> SolverSpec:
    """``SolverSpec`` for ``steps`` fixed steps of ``method``, or dopri5 when ``steps`` is None."""
    if steps is None:
        return SolverSpec("dopri5", rtol=rtol, atol=atol)
    return SolverSpec(method, steps=steps)


def _check_points(x: Tensor, who: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"{who}: expected points [B, D], got "
                         f"{getattr(x, 'shape', type(x).__name__)}.")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{who}: the points contain NaN or inf; drop those rows first.")


@torch.no_grad()
def integrate(field: nn.Module, x0: Tensor, spec: SolverSpec | None = None,
              t0: float = 0.0, t1: float = 1.0) -> Tensor:
    """Transport points ``x0 [B, D]`` from time ``t0`` to ``t1`` along ``field`` -> ``[B, D]``.

    The default ``t0 = 0 -> t1 = 1`` maps noise to data; ``spec`` defaults to 100 Euler steps.
    """
    _check_points(x0, "integrate")
    spec = spec or SolverSpec("euler", steps=100)
    return solve(field, x0, t0, t1, spec)  # type: ignore[arg-type,return-value]


@torch.no_grad()
def sample(field: nn.Module, n: int, dim: int = 2, spec: SolverSpec | None = None,
           generator: torch.Generator | None = None) -> Tensor:
    """``n`` samples ``[n, dim]``: noise ``N(0, I)`` at ``t = 0`` carried to ``t = 1``."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"sample: n must be a positive int, got {n!r}.")
    z = torch.randn(n, dim, generator=generator)
    return integrate(field, z, spec)


@torch.no_grad()
def trajectory(field: nn.Module, x0: Tensor, steps: int, method: str = "euler") -> Tensor:
    """The whole path ``[steps + 1, B, D]`` of ``steps`` fixed steps from ``t = 0`` to 1.

    Row ``k`` is the state at ``t = k / steps``; the last row equals
    ``integrate(field, x0, SolverSpec(method, steps=steps))``.
    """
    _check_points(x0, "trajectory")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"trajectory: steps must be a positive int, got {steps!r}.")
    xs = [x0]
    for k in range(steps):
        xs.append(fixed_step_solve(field, xs[-1], k / steps,  # type: ignore[arg-type]
                                   (k + 1) / steps, 1, method))
    return torch.stack(xs)


def density_model(field: nn.Module, dim: int = 2, spec: SolverSpec | None = None) -> FlowModel:
    """The CNF defined by ``field``: a :class:`FlowModel` over ``N(0, I)``.

    ``log_prob(x)`` integrates ``x`` from data (``t = 1``) back to noise with the exact
    divergence, using ``spec`` (default dopri5 at rtol = atol = 1e-5); a fixed-step ``spec``
    gives the log-density that the same discretisation assigns. The field is shared, not
    copied, and the returned model is in eval mode.
    """
    spec = spec or SolverSpec("dopri5", rtol=1e-5, atol=1e-5)
    flow = ContinuousFlow(field, dim, 1.0, train_solver=spec, eval_solver=spec,
                          train_divergence="exact", eval_divergence="exact")
    return FlowModel(flow, StandardNormal(dim)).eval()


@torch.no_grad()
def reflow_pairs(field: nn.Module, n: int, dim: int = 2, spec: SolverSpec | None = None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Rectified flow's re-pairing: ``(z [n, dim], x [n, dim])`` with ``x`` the model's sample
    from ``z``.

    Training a new field on these pairs with the straight path (a *reflow*) learns a flow
    whose paths are straighter, because the pairs are now deterministically coupled.
    """
    z = torch.randn(n, dim, generator=generator)
    return z, integrate(field, z, spec)
