"""ODE solvers for continuous flows: hand-written fixed-step ones, and torchdiffeq's adaptive one.

Every solver integrates ``dy/dt = f(t, y)`` from ``t0`` to ``t1`` (either order: ``t1 < t0``
integrates backwards in time) and returns ``y(t1)``. The state ``y`` is a tensor or a tuple of
tensors (a CNF carries ``(x, log-det, ...)`` together); ``f`` returns the same structure.
``t`` is passed to ``f`` as a 0-dimensional tensor of the state's dtype.

* ``euler`` (order 1), ``midpoint`` and ``heun`` (order 2), ``rk4`` (order 4): written out
  below so the book can show them; a fixed number of ``steps``, hence ``steps * stages``
  function evaluations, known in advance.
* ``dopri5``: torchdiffeq's adaptive Dormand-Prince 5(4), steps chosen to meet
  ``rtol``/``atol``; with ``adjoint=True`` its gradients come from torchdiffeq's
  ``odeint_adjoint`` (a second, backward-in-time solve) instead of backpropagating through the
  solver's operations.

All of them are reached through :func:`solve` and a :class:`SolverSpec`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

State = Tensor | tuple[Tensor, ...]
VectorField = Callable[[Tensor, State], State]

# Stages (function evaluations) per step of each hand-written method.
FIXED_STAGES: dict[str, int] = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}
# Their global orders of accuracy: error at t1 ~ C * h**order.
FIXED_ORDERS: dict[str, int] = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}
ADAPTIVE_METHODS = ("dopri5",)
# torchdiffeq's fixed-grid versions of the same methods (its "rk4" is the 3/8-rule variant of
# classic RK4, also of order 4); only torchdiffeq has an adjoint.
_TORCHDIFFEQ_FIXED = {"euler": "euler", "midpoint": "midpoint", "heun": "heun2", "rk4": "rk4"}


@dataclass(frozen=True)
class SolverSpec:
    """How to integrate: a method and its resolution.

    Attributes:
        method: ``"euler"``, ``"midpoint"``, ``"heun"``, ``"rk4"`` (fixed step) or
            ``"dopri5"`` (adaptive).
        steps: number of equal steps over ``[t0, t1]`` (fixed-step methods only).
        rtol, atol: error tolerances (adaptive only).
        adjoint: compute gradients with the adjoint method (torchdiffeq ``odeint_adjoint``):
            memory no longer grows with the number of steps, at the price of a backward solve.
        backend: ``"nfcourse"`` (the hand-written fixed-step solvers here) or
            ``"torchdiffeq"`` (its fixed-grid solvers; needed for ``adjoint`` with a fixed
            step). Adaptive methods always run on torchdiffeq.
    """

    method: str = "dopri5"
    steps: int = 20
    rtol: float = 1e-5
    atol: float = 1e-5
    adjoint: bool = False
    backend: str = "nfcourse"

    def __post_init__(self) -> None:
        known = (*FIXED_STAGES, *ADAPTIVE_METHODS)
        if self.method not in known:
            raise ValueError(f"SolverSpec: unknown method {self.method!r}; choose one of "
                             f"{', '.join(known)}.")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"SolverSpec: steps must be a positive int, got {self.steps!r}.")
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"SolverSpec: {name} must be a finite number > 0, got {v}.")
        if self.backend not in ("nfcourse", "torchdiffeq"):
            raise ValueError(f"SolverSpec: backend must be 'nfcourse' or 'torchdiffeq', got "
                             f"{self.backend!r}.")
        if self.adjoint and not self.adaptive and self.backend != "torchdiffeq":
            raise ValueError(f"SolverSpec: the hand-written {self.method} solver has no adjoint;"
                             " pass backend='torchdiffeq' to use torchdiffeq's fixed grid.")

    @property
    def adaptive(self) -> bool:
        return self.method in ADAPTIVE_METHODS

    def describe(self) -> str:
        """A short label, e.g. ``rk4 x 8 steps`` or ``dopri5 (rtol 1e-05, atol 1e-05)``."""
        if self.adaptive:
            s = f"{self.method} (rtol {self.rtol:g}, atol {self.atol:g})"
        else:
            s = f"{self.method} x {self.steps} steps"
            if self.backend == "torchdiffeq":
                s += " (torchdiffeq)"
        return s + (", adjoint" if self.adjoint else "")


# ----------------------------------------------------------------------------- fixed-step


def _as_tuple(y: State) -> tuple[tuple[Tensor, ...], bool]:
    if isinstance(y, Tensor):
        return (y,), True
    if isinstance(y, (tuple, list)) and y and all(isinstance(v, Tensor) for v in y):
        return tuple(y), False
    raise TypeError(f"solve: the state must be a tensor or a non-empty tuple of tensors, got "
                    f"{type(y).__name__}.")


def _combine(y: Sequence[Tensor], h: Tensor, ks: Sequence[Sequence[Tensor]],
             weights: Sequence[float]) -> tuple[Tensor, ...]:
    """``y + h * sum_j w_j k_j``, component by component of the state tuple."""
    out = []
    for i, yi in enumerate(y):
        inc = sum(w * k[i] for w, k in zip(weights, ks) if w != 0.0)
        out.append(yi + h * inc)
    return tuple(out)


def _step(f: Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, ...]], t: Tensor,
          y: tuple[Tensor, ...], h: Tensor, method: str) -> tuple[Tensor, ...]:
    """One explicit Runge-Kutta step of size ``h`` (which may be negative)."""
    k1 = f(t, y)
    if method == "euler":
        return _combine(y, h, [k1], [1.0])
    if method == "midpoint":                       # slope at the half step, Euler-predicted
        k2 = f(t + h / 2, _combine(y, h, [k1], [0.5]))
        return _combine(y, h, [k2], [1.0])
    if method == "heun":                           # trapezoid of the slopes at both ends
        k2 = f(t + h, _combine(y, h, [k1], [1.0]))
        return _combine(y, h, [k1, k2], [0.5, 0.5])
    # classic RK4: Simpson's rule over four slopes
    k2 = f(t + h / 2, _combine(y, h, [k1], [0.5]))
    k3 = f(t + h / 2, _combine(y, h, [k2], [0.5]))
    k4 = f(t + h, _combine(y, h, [k3], [1.0]))
    return _combine(y, h, [k1, k2, k3, k4], [1 / 6, 1 / 3, 1 / 3, 1 / 6])


def fixed_step_solve(f: VectorField, y0: State, t0: float, t1: float, steps: int,
                     method: str = "rk4") -> State:
    """Integrate with ``steps`` equal steps of a hand-written method (see :data:`FIXED_STAGES`).

    Costs exactly ``steps * FIXED_STAGES[method]`` evaluations of ``f``. Gradients flow by
    ordinary backpropagation through every step.
    """
    if method not in FIXED_STAGES:
        raise ValueError(f"fixed_step_solve: unknown method {method!r}; choose one of "
                         f"{', '.join(FIXED_STAGES)}.")
    ys, single = _as_tuple(y0)
    dtype, device = ys[0].dtype, ys[0].device

    def g(t: Tensor, y: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        out = f(t, y[0] if single else y)
        return _as_tuple(out)[0]

    h = torch.tensor((t1 - t0) / steps, dtype=dtype, device=device)
    for i in range(steps):
        # t from the step index, not by accumulating h, so round-off does not drift
        t = torch.tensor(t0 + (t1 - t0) * i / steps, dtype=dtype, device=device)
        ys = _step(g, t, ys, h, method)
    return ys[0] if single else ys


# ----------------------------------------------------------------------------- solve


def solve(f: VectorField, y0: State, t0: float, t1: float, spec: SolverSpec | None = None,
          adjoint_params: Sequence[Tensor] | None = None) -> State:
    """``y(t1)`` for ``dy/dt = f(t, y)``, ``y(t0) = y0``, with the solver ``spec``.

    Args:
        f: the vector field; for ``spec.adjoint`` it must be an ``nn.Module`` (whose parameters
            receive gradients) or ``adjoint_params`` must list the tensors that need them.
        y0: a tensor or tuple of tensors.
        t0, t1: start and end times (floats); ``t1 < t0`` integrates backwards.
        spec: the solver (default :class:`SolverSpec()`, dopri5 at 1e-5).
    """
    spec = spec or SolverSpec()
    if not (math.isfinite(t0) and math.isfinite(t1)):
        raise ValueError(f"solve: t0 and t1 must be finite, got {t0}, {t1}.")
    parts, _ = _as_tuple(y0)
    if t0 == t1 or all(v.numel() == 0 for v in parts):
        # nothing moves; an empty batch would otherwise drive the adaptive step size to 0
        return y0
    if not spec.adaptive and spec.backend == "nfcourse":
        return fixed_step_solve(f, y0, t0, t1, spec.steps, spec.method)

    import torchdiffeq

    ref = y0 if isinstance(y0, Tensor) else y0[0]
    t = torch.tensor([t0, t1], dtype=ref.dtype, device=ref.device)
    kwargs: dict = {}
    if spec.adaptive:
        kwargs.update(method=spec.method, rtol=spec.rtol, atol=spec.atol)
    else:
        kwargs.update(method=_TORCHDIFFEQ_FIXED[spec.method],
                      options={"step_size": abs(t1 - t0) / spec.steps})
    if spec.adjoint:
        if adjoint_params is None and not isinstance(f, nn.Module):
            raise TypeError("solve(adjoint=True): the vector field must be an nn.Module, or "
                            "pass adjoint_params= (the tensors that need gradients; () if none).")
        ys = torchdiffeq.odeint_adjoint(f, y0, t, adjoint_params=adjoint_params, **kwargs)
    else:
        ys = torchdiffeq.odeint(f, y0, t, **kwargs)
    return ys[-1] if isinstance(ys, Tensor) else tuple(y[-1] for y in ys)


def convergence_order(steps: Sequence[int], errors: Sequence[float]) -> float:
    """Least-squares slope of ``log(error)`` against ``log(h)``, with ``h ~ 1/steps``.

    For a method of order ``p`` the error behaves like ``C h^p`` once ``h`` is small enough, so
    the slope is the measured order. Errors must be positive (drop those at round-off level).
    """
    if len(steps) != len(errors) or len(steps) < 2:
        raise ValueError("convergence_order: need at least two (steps, error) pairs of equal "
                         "length.")
    if any(e <= 0 or not math.isfinite(e) for e in errors):
        raise ValueError(f"convergence_order: errors must be finite and > 0, got {list(errors)}; "
                         "drop step counts whose error is at round-off level.")
    lh = torch.tensor([-math.log(s) for s in steps], dtype=torch.float64)
    le = torch.tensor([math.log(e) for e in errors], dtype=torch.float64)
    lh_c = lh - lh.mean()
    return float((lh_c * (le - le.mean())).sum() / (lh_c**2).sum())
