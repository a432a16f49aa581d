"""Measuring CNFs: memory held for the backward pass (direct vs adjoint) and sampling time
(timed with :class:`nfcourse.book.bench.Stopwatch`).

On a CPU PyTorch has no allocator statistics, and process-level numbers (peak RSS) mix in
everything else the process ever allocated. What backpropagation through a solver costs is
the tensors autograd keeps alive between the forward and the backward pass, so that is what
:class:`SavedTensorMeter` measures: it sees every tensor saved for backward (through
``torch.autograd.graph.saved_tensors_hooks``), counts each storage once while any saved
reference to it is alive, and records the peak of that total. It does not count temporaries
that are freed before the backward pass, nor the parameters' gradients; it does count the
small graphs the adjoint's backward solve builds step by step.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from nfcourse.book.bench import Stopwatch, alternate
from nfcourse.flows.continuous import CNF, ContinuousFlow
from nfcourse.ode.divergence import divergence_exact
from nfcourse.ode.solvers import SolverSpec


class _Held:
    """A saved tensor; when autograd drops it, its storage's reference count goes down."""

    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor: Tensor, key: int, meter: SavedTensorMeter) -> None:
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self) -> None:
        self.meter._release(self.key)


class SavedTensorMeter:
    """Context manager: peak bytes of distinct storages saved by autograd inside it.

    Usage::

        with SavedTensorMeter() as meter:
            loss = model.nll(x)
            loss.backward()
        meter.peak_bytes
    """

    def __init__(self) -> None:
        self.live: dict[int, list[int]] = {}   # storage pointer -> [references, bytes]
        self.current = 0
        self.peak_bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, t: Tensor) -> _Held:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        entry = self.live.get(key)
        if entry is None:
            self.live[key] = [1, storage.nbytes()]
            self.current += storage.nbytes()
            self.peak_bytes = max(self.peak_bytes, self.current)
        else:
            entry[0] += 1
        # keep a detached alias: holding ``t`` itself would hold its grad_fn, which holds this
        # object, a reference cycle that only the cyclic garbage collector would break
        return _Held(t.detach(), key, self)

    @staticmethod
    def _unpack(held: _Held) -> Tensor:
        return held.tensor

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self.live[key]

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


@dataclass(frozen=True)
class BackwardCost:
    """One forward+backward pass: peak saved-for-backward memory (MiB), and its fastest wall
    time and fastest CPU time (s) over the repeats.

    ``seconds`` is the smaller of the two times: on an idle machine the wall time (at most the
    CPU time of a compute-bound pass), on a shared one the CPU time (which the competition
    hardly changes); see :class:`Stopwatch`.
    """

    peak_mib: float
    wall_seconds: float
    cpu_seconds: float

    @property
    def seconds(self) -> float:
        return min(self.wall_seconds, self.cpu_seconds)


def measure_backward(loss_fn: Callable[[], Tensor], repeats: int = 1) -> BackwardCost:
    """Run ``loss_fn().backward()`` ``repeats`` times; the peak memory and the fastest times."""
    if repeats < 1:
        raise ValueError(f"measure_backward: repeats must be >= 1, got {repeats}.")
    wall = cpu = float("inf")
    peak = 0
    for _ in range(repeats):
        with SavedTensorMeter() as meter, Stopwatch() as clock:
            loss_fn().backward()
        wall, cpu = min(wall, clock.wall), min(cpu, clock.cpu)
        peak = max(peak, meter.peak_bytes)
    return BackwardCost(peak / 2**20, wall, cpu)


@dataclass(frozen=True)
class AdjointComparison:
    """Direct backpropagation vs the adjoint method for one integration length ``T``.

    ``direct``/``adjoint``: peak saved memory and best time of one forward+backward pass;
    ``direct_nfe``/``adjoint_nfe``: function evaluations per pass (the adjoint's include its
    backward solve).
    """

    T: float
    steps: int
    direct: BackwardCost
    adjoint: BackwardCost
    direct_nfe: int
    adjoint_nfe: int

    @property
    def time_ratio(self) -> float:
        return self.adjoint.seconds / self.direct.seconds


def compare_adjoint(model: CNF, x: Tensor, lengths: Sequence[float], steps_per_unit: int = 8,
                    repeats: int = 3) -> list[AdjointComparison]:
    """Measure ``model.nll(x).backward()`` with and without the adjoint for each ``T`` in
    ``lengths``.

    Both use torchdiffeq's fixed-grid RK4 with ``round(steps_per_unit * T)`` steps, so the
    forward solves are identical and only the way gradients are obtained differs. The model is
    put in training mode; its ``T``, training solver and mode are restored afterwards. The
    first length is run once unmeasured first, so one-off costs are not charged to it.
    """
    if not lengths or any(not (float(T) > 0 and math.isfinite(T)) for T in lengths):
        raise ValueError(f"compare_adjoint: lengths must be a non-empty list of finite numbers "
                         f"> 0, got {list(lengths)}.")
    if steps_per_unit < 1 or repeats < 1:
        raise ValueError(f"compare_adjoint: steps_per_unit and repeats must be >= 1, got "
                         f"{steps_per_unit} and {repeats}.")
    flow = model.cflow
    saved = (flow.T, flow.train_solver, model.training)
    history_length = len(flow.nfe_history)
    model.train()
    rows = []
    try:
        for i, T in enumerate(lengths):
            flow.T = float(T)
            steps = max(1, round(steps_per_unit * T))
            cost: dict[bool, BackwardCost] = {}
            nfe: dict[bool, int] = {}
            for adjoint in (False, True):
                flow.train_solver = SolverSpec("rk4", steps=steps, adjoint=adjoint,
                                               backend="torchdiffeq")
                if i == 0:
                    measure_backward(lambda: model.nll(x))  # warm-up
                calls = flow.dynamics.calls
                cost[adjoint] = measure_backward(lambda: model.nll(x), repeats)
                nfe[adjoint] = (flow.dynamics.calls - calls) // repeats
            rows.append(AdjointComparison(float(T), steps, cost[False], cost[True], nfe[False],
                                          nfe[True]))
    finally:
        flow.T, flow.train_solver = saved[0], saved[1]
        del flow.nfe_history[history_length:]  # these solves were not training
        model.train(saved[2])
        model.zero_grad(set_to_none=True)
    return rows


def time_sampling(model: CNF, spec: SolverSpec, n: int = 100, repeats: int = 15,
                  generator: torch.Generator | None = None) -> tuple[float, int]:
    """Time of ``model.sample(n)`` with the solver ``spec`` in ms, and its NFE.

    The time is the smaller of the median wall time and the median CPU time over ``repeats``
    calls (see :class:`Stopwatch`), after one unmeasured call; gradients are off and the
    model's solvers are restored afterwards.
    """
    if n < 1 or repeats < 1:
        raise ValueError(f"time_sampling: n and repeats must be >= 1, got {n} and {repeats}.")
    with model.cflow.override(solver=spec), torch.no_grad():
        model.sample(n, generator=generator)
        walls, cpus = [], []
        for _ in range(repeats):
            with Stopwatch() as clock:
                model.sample(n, generator=generator)
            walls.append(clock.wall)
            cpus.append(clock.cpu)
        nfe = model.cflow.last_nfe
    return 1000 * min(statistics.median(walls), statistics.median(cpus)), nfe



def parameter_gradient(model: CNF, x: Tensor, spec: SolverSpec) -> Tensor:
    """The gradient of ``model.nll(x)`` with respect to all parameters, flattened: ``[P]``.

    The model is put in training mode and its training solver set to ``spec`` (with
    ``spec.adjoint`` the gradient comes from the adjoint's backward solve, otherwise from
    backpropagating through the forward solve); mode, solver, the NFE history and the
    parameters' ``.grad`` are restored afterwards.
    """
    flow = model.cflow
    saved = (flow.train_solver, model.training, len(flow.nfe_history))
    old_grads = [p.grad for p in model.parameters()]
    model.train()
    flow.train_solver = spec
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(model.nll(x), params, allow_unused=True)
        return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                          for p, g in zip(params, grads)]).detach()
    finally:
        flow.train_solver = saved[0]
        model.train(saved[1])
        del flow.nfe_history[saved[2]:]
        for p, g in zip(model.parameters(), old_grads):
            p.grad = g


def relative_difference(a: Tensor, b: Tensor) -> float:
    """``|a - b| / |b|`` in the Euclidean norm (``a``, ``b`` of one shape; ``b`` the reference)."""
    return ((a - b).norm() / b.norm()).item()


def reconstruction_error(flow: ContinuousFlow, x: Tensor, spec: SolverSpec) -> float:
    """``max |forward(inverse(x)) - x|`` with the points alone integrated by ``spec``.

    ``x`` (``[B, D]``, data) is moved to noise (``T -> 0``) and back (``0 -> T``). The
    adjoint method needs the trajectory during its backward solve and, instead of storing it,
    re-integrates the ODE in the other direction from where the forward solve ended; this is
    the error of that reconstruction at the far end (exactly so for a fixed-step solver; for an
    adaptive one the adjoint's own step choice, made for the augmented system, differs).
    """
    with torch.no_grad(), flow.override(solver=spec):
        back = flow.transport(flow.transport(x, to_data=False), to_data=True)
    return (back - x).abs().max().item()


def matmul_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call of ``fn``, as counted by PyTorch's
    ``FlopCounterMode`` (matrix products and convolutions; element-wise work is not counted).

    Tensors that need gradients and are fed to an ``nn.Module`` inside ``fn`` must not be
    leaves if ``fn`` calls ``torch.autograd.grad`` (a limitation of the counter's module
    hooks); use ``x.detach().requires_grad_() * 1.0``.
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class ProbeCost:
    """What the divergence costs at one evaluation of a field ``v(t, x)`` on a batch ``[B, D]``.

    ``*_flops``: counted by :func:`matmul_flops`; ``*_seconds``: median time over the rounds.
    ``field``: the evaluation ``v = field(t, x)`` itself; ``vjp``: one vector-Jacobian product
    ``e^T dv/dx`` (Hutchinson's estimator, one probe); ``exact``: the exact diagonal, ``D``
    vector-Jacobian products (:func:`~nfcourse.ode.divergence.divergence_exact`). The last two
    exclude the field evaluation they start from.
    """

    dim: int
    field_flops: int
    vjp_flops: int
    exact_flops: int
    field_seconds: float
    vjp_seconds: float
    exact_seconds: float

    @property
    def vjp_per_field(self) -> float:
        """Time of one vector-Jacobian product in field evaluations."""
        return self.vjp_seconds / self.field_seconds

    @property
    def exact_per_vjp(self) -> float:
        """Time of the exact divergence in Hutchinson probes."""
        return self.exact_seconds / self.vjp_seconds


def probe_costs(field: nn.Module, x: Tensor, t: float = 0.5, rounds: int = 11,
                repeat: int = 5) -> ProbeCost:
    """Count and time one field evaluation, one Hutchinson probe and the exact divergence.

    ``field(t, x)`` maps ``[B, D] -> [B, D]``; the probe is a fixed Rademacher vector per
    sample. Times use :func:`~nfcourse.book.bench.alternate` (the fastest of ``repeat`` calls
    per round, the median over ``rounds``).
    """
    if x.dim() != 2:
        raise ValueError(f"probe_costs: expected x of shape [B, D], got {list(x.shape)}.")
    xs = x.detach().requires_grad_(True) * 1.0   # not a leaf: see matmul_flops
    tt = torch.tensor(float(t), dtype=x.dtype)
    probe = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)
                          ).to(x.dtype) * 2 - 1
    v = field(tt, xs)

    def vjp() -> object:
        return torch.autograd.grad(v, xs, probe, retain_graph=True)

    def exact() -> object:
        return divergence_exact(v, xs)

    def evaluate() -> object:
        return field(tt, xs)   # with its graph, as inside a CNF's solve

    flops = [matmul_flops(fn) for fn in (evaluate, vjp, exact)]
    times = alternate({"field": evaluate, "vjp": vjp, "exact": exact}, rounds=rounds,
                      repeat=repeat, reduce="min")
    return ProbeCost(x.shape[1], *flops, *(times[k].median for k in ("field", "vjp", "exact")))
