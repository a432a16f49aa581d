"""Continuous normalizing flows (CNF, FFJORD) in the book's direction convention.

The flow is the solution map of ``dx/dt = v(x, t)`` over ``t in [0, T]``: noise ``z`` sits at
``t = 0`` and data ``x`` at ``t = T`` (the convention of flow matching), so

* ``forward(z) -> (x, logdet)`` integrates from ``0`` to ``T`` (noise -> data), and
* ``inverse(x) -> (z, logdet)`` integrates from ``T`` back to ``0`` (data -> noise).

Both carry the augmented state ``[x, l]`` with ``dl/dt = div v(x, t)`` and ``l = 0`` at the
start (the instantaneous change of variables, ``d log p(x(t))/dt = -div v``). Forward, ``l(T)
= int_0^T div v dt = log|det dx/dz|``; inverse, the same equation run backwards gives ``l(0) =
-int_0^T div v dt = log|det dz/dx|``. So ``log p(x) = log N(z) + l(0)``.

The divergence is exact (autograd, one pass per dimension; the default for evaluation) or
Hutchinson's estimate with one probe per sample held fixed for the whole solve (FFJORD; the
default for training). Solvers come from :mod:`nfcourse.ode.solvers`; the training and
evaluation solvers are separate settings, picked by ``module.training``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from nfcourse.ode.divergence import (divergence_exact, divergence_hutchinson, jacobian_rows,
                                     sample_probe)
from nfcourse.ode.solvers import SolverSpec, solve
from nfcourse.core.distributions import StandardNormal
from nfcourse.core.flow import Flow
from nfcourse.core.model import FlowModel
from nfcourse.nn import VelocityMLP
from nfcourse.core.validation import check_count

DIVERGENCES = ("exact", "gaussian", "rademacher")


class LinearField(nn.Module):
    """The linear field ``v(x, t) = A x`` (``A`` fixed, ``[D, D]``), for closed-form checks.

    Its flow is ``x(t) = expm(t A) x(0)`` and its divergence is ``tr(A)`` everywhere, so the
    log-det over ``[0, T]`` is exactly ``T tr(A)``.
    """

    def __init__(self, A: Tensor) -> None:
        super().__init__()
        if A.dim() != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"LinearField: A must be a square matrix [D, D], got "
                             f"{list(A.shape)}.")
        self.A = nn.Parameter(A.clone())

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return x @ self.A.T

    def flow_map(self, x: Tensor, t: float) -> Tensor:
        """The exact solution ``expm(t A) x`` for ``x: [B, D]``."""
        return x @ torch.linalg.matrix_exp(t * self.A.detach().to(x.dtype)).T


class AugmentedDynamics(nn.Module):
    """The right-hand side of the augmented ODE, ``(x, l[, kinetic, frobenius])``.

    Returns ``(v, div v[, |v|^2, |dv/dx|_F^2])``, each per sample. The settings of one solve
    are arguments of :meth:`forward` (bind them with ``functools.partial``), not state, so
    two solves cannot see each other's. ``calls`` counts every evaluation, including those a
    backward (adjoint) solve makes.
    """

    def __init__(self, field: nn.Module) -> None:
        super().__init__()
        self.field = field
        self.calls = 0

    def forward(self, t: Tensor, state: tuple[Tensor, ...], *, divergence: str | None = "exact",
                probe: Tensor | None = None, regularize: bool = False) -> tuple[Tensor, ...]:
        """``divergence``: ``"exact"``, ``"gaussian"``/``"rademacher"`` (Hutchinson with the
        fixed ``probe``) or ``None`` (transport ``x`` only, no log-density); ``regularize``
        adds the RNODE integrands."""
        self.calls += 1
        x = state[0]
        if divergence is None:
            return (self.field(t, x),)
        # The divergence needs a graph from x to v even when the caller runs without gradients;
        # create_graph only when the caller will differentiate the result (training, adjoint,
        # Jacobian checks).
        differentiable = torch.is_grad_enabled()
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            v = self.field(t, x)
            extra: tuple[Tensor, ...] = ()
            if divergence == "exact":
                if regularize:
                    jac = jacobian_rows(v, x, create_graph=differentiable)
                    div = torch.diagonal(jac, dim1=1, dim2=2).sum(1)
                    extra = (v.square().sum(1), jac.square().sum((1, 2)))
                else:
                    div = divergence_exact(v, x, create_graph=differentiable)
            else:
                if probe is None:
                    raise ValueError(f"AugmentedDynamics: divergence={divergence!r} needs a "
                                     "probe (nfcourse.ode.divergence.sample_probe).")
                div, vjp = divergence_hutchinson(v, x, probe, create_graph=differentiable)
                if regularize:
                    extra = (v.square().sum(1), vjp.square().sum(1))
        out = (v, div, *extra)
        return out if differentiable else tuple(o.detach() for o in out)


class ContinuousFlow(Flow):
    """A CNF as a :class:`~nfcourse.core.flow.Flow`: noise at ``t = 0``, data at ``t = T``.

    Args:
        field: the vector field ``v(t, x)``, e.g. :class:`~nfcourse.nn.VelocityMLP`.
        dim: the data dimension ``D`` (samples are ``[B, D]``).
        T: integration length.
        train_solver, eval_solver: solvers used in ``train()`` and ``eval()`` mode.
        train_divergence, eval_divergence: ``"exact"``, ``"gaussian"`` or ``"rademacher"``.
    """

    def __init__(self, field: nn.Module, dim: int, T: float = 1.0,
                 train_solver: SolverSpec | None = None, eval_solver: SolverSpec | None = None,
                 train_divergence: str = "rademacher", eval_divergence: str = "exact") -> None:
        super().__init__(dim)
        if not T > 0:
            raise ValueError(f"ContinuousFlow: T must be > 0, got {T}.")
        for name, kind in (("train_divergence", train_divergence),
                           ("eval_divergence", eval_divergence)):
            if kind not in DIVERGENCES:
                raise ValueError(f"ContinuousFlow: {name}={kind!r}; choose one of "
                                 f"{', '.join(DIVERGENCES)}.")
        self.dynamics = AugmentedDynamics(field)
        self.dim, self.T = dim, float(T)
        self.train_solver = train_solver or SolverSpec("dopri5", rtol=1e-5, atol=1e-5)
        self.eval_solver = eval_solver or SolverSpec("dopri5", rtol=1e-6, atol=1e-6)
        self.train_divergence, self.eval_divergence = train_divergence, eval_divergence
        self.last_nfe = 0                 # evaluations of the last forward-in-code solve
        self.nfe_history: list[int] = []  # last_nfe of every solve made in training mode
        self.generator: torch.Generator | None = None  # for Hutchinson probes, if set

    @property
    def field(self) -> nn.Module:
        return self.dynamics.field

    @property
    def solver(self) -> SolverSpec:
        """The solver for the current mode (``train_solver`` or ``eval_solver``)."""
        return self.train_solver if self.training else self.eval_solver

    @property
    def divergence(self) -> str:
        return self.train_divergence if self.training else self.eval_divergence

    @contextlib.contextmanager
    def override(self, solver: SolverSpec | None = None, divergence: str | None = None
                 ) -> Iterator[ContinuousFlow]:
        """Temporarily use ``solver`` / ``divergence`` in both modes (e.g. for a benchmark)."""
        saved = (self.train_solver, self.eval_solver, self.train_divergence,
                 self.eval_divergence)
        if divergence is not None and divergence not in DIVERGENCES:
            raise ValueError(f"override: divergence={divergence!r}; choose one of "
                             f"{', '.join(DIVERGENCES)}.")
        try:
            if solver is not None:
                self.train_solver = self.eval_solver = solver
            if divergence is not None:
                self.train_divergence = self.eval_divergence = divergence
            yield self
        finally:
            (self.train_solver, self.eval_solver, self.train_divergence,
             self.eval_divergence) = saved

    def integrate(self, y: Tensor, t0: float, t1: float, *, log_density: bool = True,
                  regularize: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Integrate ``[B, D]`` points from ``t0`` to ``t1`` with the current mode's settings.

        Returns ``(y(t1) [B, D], l [B], kinetic [B], frobenius [B])`` where ``l`` is the
        integral of the divergence from ``t0`` to ``t1`` (the log-det of the map ``y(t0) ->
        y(t1)``), and the last two are the RNODE integrals ``int |v|^2 dt`` and
        ``int |dv/dx|_F^2 dt`` over the interval (zeros unless ``regularize``). Without
        ``log_density`` only the points move (no divergence), and ``l`` is zero.
        """
        dyn = self.dynamics
        b = y.shape[0]
        zeros = y.new_zeros(b)
        divergence = self.divergence if log_density else None
        regularize = regularize and log_density
        probe = None
        if divergence in ("gaussian", "rademacher"):
            # one probe per sample for the whole solve: the estimate is then the exact
            # log-density of one fixed ODE, and unbiased over the probe
            probe = sample_probe(y.shape, divergence, self.generator, y.dtype, y.device)
        state: tuple[Tensor, ...] = (y,) if divergence is None else (
            (y, zeros, zeros, zeros) if regularize else (y, zeros))
        spec = self.solver
        start = dyn.calls
        rhs = functools.partial(dyn, divergence=divergence, probe=probe, regularize=regularize)
        # the partial is not a Module, so the adjoint is told the parameters explicitly
        out = solve(rhs, state, t0, t1, spec,
                    adjoint_params=tuple(p for p in dyn.parameters() if p.requires_grad)
                    if spec.adjoint else None)
        self.last_nfe = dyn.calls - start
        if self.training and torch.is_grad_enabled():
            self.nfe_history.append(self.last_nfe)
        out = (out,) if isinstance(out, Tensor) else tuple(out)
        if divergence is None:
            return out[0], zeros, zeros, zeros
        sign = 1.0 if t1 > t0 else -1.0  # the RNODE integrals are reported as positive
        if regularize:
            return out[0], out[1], sign * out[2], sign * out[3]
        return out[0], out[1], zeros, zeros

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        x, logdet, _, _ = self.integrate(z, 0.0, self.T)
        return x, logdet

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, logdet, _, _ = self.integrate(x, self.T, 0.0)
        return z, logdet

    def transport(self, y: Tensor, to_data: bool = True) -> Tensor:
        """Move points without tracking the density: noise -> data (``to_data``) or back."""
        y = self._validate(y, "transport", "y")
        t0, t1 = (0.0, self.T) if to_data else (self.T, 0.0)
        return self.integrate(y, t0, t1, log_density=False)[0]


class CNF(FlowModel):
    """FFJORD-style density model: a :class:`ContinuousFlow` over a standard normal base.

    ``log_prob`` integrates data -> noise; ``sample`` integrates noise -> data without the
    divergence. In training mode ``nll`` adds RNODE's regularisers,
    ``kinetic * E[int |v|^2 dt] + jacobian * E[int |dv/dx|_F^2 dt]``, which favour straight,
    smooth trajectories that an adaptive solver crosses in few steps.

    Args:
        dim: data dimension; hidden, layers, activation: the field, a
            :class:`~nfcourse.nn.VelocityMLP` that sees ``t`` in every layer (no Fourier
            features) and starts at zero (the identity flow).
        T: integration length; solvers and divergences: see :class:`ContinuousFlow`.
        kinetic, jacobian: RNODE weights (0 switches a term off).
    """

    def __init__(self, dim: int = 2, hidden: int = 64, layers: int = 3,
                 activation: str = "tanh", T: float = 1.0,
                 train_solver: SolverSpec | None = None, eval_solver: SolverSpec | None = None,
                 train_divergence: str = "rademacher", eval_divergence: str = "exact",
                 kinetic: float = 0.0, jacobian: float = 0.0) -> None:
        if kinetic < 0 or jacobian < 0:
            raise ValueError(f"CNF: RNODE weights must be >= 0, got kinetic={kinetic}, "
                             f"jacobian={jacobian}.")
        field = VelocityMLP(dim, hidden, layers, activation, frequencies=0, time_in_output=True,
                            zero_last=True)
        flow = ContinuousFlow(field, dim, T, train_solver, eval_solver, train_divergence,
                              eval_divergence)
        super().__init__(flow, StandardNormal(dim))
        self.kinetic, self.jacobian = float(kinetic), float(jacobian)
        self.last_regularizers = (0.0, 0.0)
        self._spec_kwargs: dict[str, Any] = {
            "dim": dim, "hidden": hidden, "layers": layers, "activation": activation,
            "T": float(T), "train_divergence": train_divergence,
            "eval_divergence": eval_divergence, "kinetic": float(kinetic),
            "jacobian": float(jacobian)}

    def model_spec(self) -> dict[str, Any]:
        """``{"name": "cnf", "kwargs": ...}`` for ``fit(model_spec=...)``: rebuilds this model
        (solvers as plain dicts, so the checkpoint stays loadable with ``weights_only``)."""
        solvers = {"train_solver": dataclasses.asdict(self.cflow.train_solver),
                   "eval_solver": dataclasses.asdict(self.cflow.eval_solver)}
        return {"name": "cnf", "kwargs": {**self._spec_kwargs, **solvers}}

    @property
    def cflow(self) -> ContinuousFlow:
        return self.flow  # type: ignore[return-value]

    def nll(self, x: Tensor) -> Tensor:
        """Mean NLL in nats, plus the RNODE terms in training mode when their weights are > 0."""
        regularize = self.training and (self.kinetic > 0 or self.jacobian > 0)
        if not regularize:
            return super().nll(x)
        x = self.flow._validate(x, "nll", "x")
        z, logdet, kin, frob = self.cflow.integrate(x, self.cflow.T, 0.0, regularize=True)
        log_p = self.base.log_prob(z) + logdet  # type: ignore[operator]
        self.last_regularizers = (float(kin.detach().mean()), float(frob.detach().mean()))
        return -log_p.mean() + self.kinetic * kin.mean() + self.jacobian * frob.mean()

    def log_prob_at(self, x: Tensor, t: float) -> Tensor:
        """``x: [B, D] -> log p_t(x): [B]``, the density the flow has made by time ``t``.

        ``p_t`` is the base pushed along the ODE from 0 to ``t`` (``p_0`` is the base,
        ``p_T`` the model): integrate ``x`` back from ``t`` to 0 and add the integral of the
        divergence, as ``log_prob`` does from ``T``.
        """
        if not 0.0 <= t <= self.cflow.T:
            raise ValueError(f"CNF.log_prob_at: t must be in [0, T] = [0, {self.cflow.T}], "
                             f"got {t}.")
        x = self.flow._validate(x, "log_prob_at", "x")
        if t == 0.0:
            return self.base.log_prob(x)  # type: ignore[operator]
        z, logdet, _, _ = self.cflow.integrate(x, float(t), 0.0)
        return self.base.log_prob(z) + logdet  # type: ignore[operator]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples ``[n, D]`` (noise -> data; no divergence is computed)."""
        n = check_count(n, "CNF.sample(n)")
        z = self.base.sample(n, generator=generator)  # type: ignore[operator]
        return self.cflow.transport(z, to_data=True)


