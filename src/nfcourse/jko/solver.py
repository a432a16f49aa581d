"""A flow-based JKO solver: each step fits a small invertible map to push particles forward.

The JKO step ``p_{k+1} = argmin_p F[p] + W2^2(p, p_k) / (2 tau)`` with
``F[p] = KL(p || pi) = E_p[log p + U] + log Z`` is searched over pushforwards ``p = T#p_k`` of
the current iterate by an invertible map ``T`` (a :class:`~nfcourse.core.flow.Flow`; its
``forward`` takes the particles of ``p_k`` to those of ``p_{k+1}``). For such ``p``,

* by the change of variables, ``log p(T(x)) = log p_k(x) - log|det J_T(x)|``, so
  ``E_p[log p] = E_{p_k}[log p_k] - E_{p_k}[log|det J_T|]``: the entropy needs only the map's
  log-determinant, never a density estimate;
* ``E_p[U] = E_{p_k}[U(T(x))]``;
* ``W2^2(T#p_k, p_k) <= E_{p_k}|T(x) - x|^2``, with equality when ``T`` is the optimal map; the
  minimum over all maps ``T`` with the same ``T#p_k`` is exactly ``W2^2``.

Dropping the constant ``E[log p_k] + log Z``, each step therefore minimises over the map's
parameters the particle average of

    -log|det J_T(x)| + U(T(x)) + |T(x) - x|^2 / (2 tau),                 x ~ p_k.

Particles and their exact log-densities are then carried forward, so every iterate's free
energy is estimated per step with a standard error, and the composition of all maps is itself
a normalizing flow whose density can be evaluated anywhere (:meth:`JKORun.model`).

The fitting particles and the evaluation particles are separate samples: on the fitting
particles the energy inequality ``F_{k+1} + E|T(x) - x|^2 / (2 tau) <= F_k`` holds exactly
whenever the optimiser ends below where it started (the identity map), so monotone decrease
there checks the optimiser; on the evaluation particles, which the maps never saw, it is a
genuine statistical check of the scheme.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from nfcourse.core.flow import Compose, Flow
from nfcourse.flows.coupling import AffineCoupling, coupling_masks
from nfcourse.flows.simple import ElementwiseAffine
from nfcourse.jko.targets import Target
from nfcourse.core.model import FlowModel
from nfcourse.core.validation import check_tensor, validation
from nfcourse.training.engine import TrainConfig, fit
from nfcourse.metrics.stats import mean_se

OPTIMIZERS = ("adam", "lbfgs")


@dataclass(frozen=True)
class JKOConfig:
    """How each JKO step is solved.

    Attributes:
        tau: the JKO time step (``> 0``); ``k`` steps reach time ``k * tau``.
        iterations: optimiser iterations per step (Adam steps, or L-BFGS iterations).
        lr: learning rate (Adam, cosine-decayed to 0 within each step) or initial L-BFGS step.
        optimizer: ``"adam"`` (any map; trained by :func:`nfcourse.training.engine.fit`) or
            ``"lbfgs"`` (few parameters, full precision).
    """

    tau: float
    iterations: int = 200
    lr: float = 1e-2
    optimizer: str = "adam"

    def __post_init__(self) -> None:
        if not (isinstance(self.tau, (int, float)) and math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"JKOConfig: tau must be a finite time step > 0, got {self.tau!r}.")
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"JKOConfig: iterations must be an int >= 1, got {self.iterations!r}.")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"JKOConfig: lr must be > 0, got {self.lr!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"JKOConfig: optimizer must be one of {', '.join(OPTIMIZERS)}, "
                             f"got {self.optimizer!r}.")


@dataclass
class Particles:
    """Samples ``x [N, D]`` of an iterate and its exact log-density ``log_p [N]`` at them."""

    x: Tensor
    log_p: Tensor

    def __post_init__(self) -> None:
        check_tensor(self.x, None, name="Particles.x")
        if self.x.dim() != 2:
            raise ValueError(f"Particles.x: expected shape [N, D], got {list(self.x.shape)}.")
        if self.log_p.shape != self.x.shape[:1]:
            raise ValueError(f"Particles.log_p: expected shape [{self.x.shape[0]}], got "
                             f"{list(self.log_p.shape)}.")

    def free_energy_terms(self, target: Target) -> Tensor:
        """Per-particle ``log p(x) + U(x) + log Z`` ``[N]`` (float64); its mean estimates
        ``KL(p || pi)``."""
        with torch.no_grad():
            return (self.log_p + target.potential(self.x) + target.log_z).double()

    def free_energy(self, target: Target) -> tuple[float, float]:
        """``KL(p || pi)`` estimated as the particle mean of ``log p + U + log Z``, and its
        standard error (``std / sqrt(N)``). In nats."""
        return mean_se(self.free_energy_terms(target))

    def push(self, flow: Flow) -> Particles:
        """The particles of ``flow.forward # p``: ``y = T(x)``, ``log p(y) = log p(x) - logdet``."""
        with torch.no_grad(), validation(False):
            y, logdet = flow.forward(self.x)
        return Particles(y, self.log_p - logdet)


@dataclass(frozen=True)
class StepFit:
    """What the optimiser of one JKO step achieved, on the fitting particles (nats).

    ``objective = -E log|det J_T| + E U(T x) + transport / (2 tau)``; ``objective_identity`` is
    its value at ``T = id`` (the step's starting point), so ``objective <= objective_identity``
    is the energy inequality on these particles.
    """

    objective_identity: float
    objective: float
    transport: float


def jko_objective(flow: Flow, x: Tensor, target: Target, tau: float) -> tuple[Tensor, Tensor]:
    """The per-step loss and its transport part.

    ``x [N, D]`` are particles of ``p_k``; returns ``(loss, transport)`` scalars, where
    ``transport = mean |T(x) - x|^2`` and ``loss = mean(-logdet + U(T(x))) + transport / (2 tau)``.
    """
    with validation(False):  # checked once at the boundary; per-iteration checks cost syncs
        y, logdet = flow.forward(x)
    transport = ((y - x) ** 2).sum(dim=1).mean()
    loss = (target.potential(y) - logdet).mean() + transport / (2 * tau)
    return loss, transport


class JKOStepObjective(nn.Module):
    """One JKO step as a training objective for :func:`nfcourse.training.engine.fit`.

    ``data`` is the fitting particles ``x [N, D]`` themselves: every step uses all of them (a
    deterministic full-batch optimisation, not a stochastic estimate), so ``draw`` ignores
    ``n`` and the generators. Loss and evaluation: :func:`jko_objective` in nats.
    """

    def __init__(self, flow: Flow, target: Target, tau: float) -> None:
        super().__init__()
        self.flow, self.target, self.tau = flow, target, tau

    @property
    def model(self) -> Flow:
        return self.flow

    def draw(self, data: Tensor, n: int, generator: torch.Generator,
             noise_generator: torch.Generator) -> Tensor:
        return data

    def loss(self, x: Tensor) -> Tensor:
        return jko_objective(self.flow, x, self.target, self.tau)[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.loss(x)

    def evaluate(self, x: Tensor) -> float:
        return float(self.loss(x).detach())


def jko_train_config(config: JKOConfig, particles: int) -> TrainConfig:
    """The engine settings of an Adam JKO step: Adam (no weight decay), the learning rate
    cosine-decayed to 0 over the step's iterations, no warm-up or clipping, one evaluation
    at the end and no restore-best (the step's result is its last iterate)."""
    return TrainConfig(steps=config.iterations, batch_size=particles, lr=config.lr,
                       weight_decay=0.0, warmup=0, schedule="cosine", min_lr_ratio=0.0,
                       clip_grad=None, eval_every=config.iterations, eval_size=particles,
                       restore_best=False)


def fit_jko_map(flow: Flow, x: Tensor, target: Target, config: JKOConfig) -> StepFit:
    """Fit ``flow`` (in place) to minimise :func:`jko_objective` on the particles ``x [N, D]``.

    ``flow`` should start at the identity (then the objective starts at ``E U(x)``).
    ``"adam"`` runs the one training loop, :func:`nfcourse.training.engine.fit`, on
    :class:`JKOStepObjective`. ``"lbfgs"`` stays outside it: L-BFGS needs a closure that
    re-evaluates the loss several times per step (its line search) and builds its own curvature
    model, so the engine's one-loss-per-step loop, schedules, clipping and EMA do not apply.
    Raises ``FloatingPointError`` if the objective becomes non-finite.
    """
    x = x.detach()
    with torch.no_grad():
        start, _ = jko_objective(flow, x, target, config.tau)
    params = [p for p in flow.parameters() if p.requires_grad]
    if not params:
        raise ValueError("fit_jko_map: the map has no trainable parameters.")
    if config.optimizer == "lbfgs":
        _fit_lbfgs(flow, params, x, target, config)
    else:
        fit(JKOStepObjective(flow, target, config.tau), x, jko_train_config(config, len(x)),
            eval_data=x, progress=False)
    with torch.no_grad():
        end, transport = jko_objective(flow, x, target, config.tau)
    return StepFit(float(start), float(end), float(transport))


def _fit_lbfgs(flow: Flow, params: list[Tensor], x: Tensor, target: Target,
               config: JKOConfig) -> None:
    """Full-precision L-BFGS with a strong-Wolfe line search on all particles."""
    opt = torch.optim.LBFGS(params, lr=config.lr, max_iter=config.iterations,
                            tolerance_grad=1e-12, tolerance_change=1e-15,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss, _ = jko_objective(flow, x, target, config.tau)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"JKO step objective became {float(loss)}; lower lr, raise the map's "
                "scale bound or use a smaller tau.")
        loss.backward()
        return loss

    opt.step(closure)


@dataclass
class JKORun:
    """The result of :func:`flow_jko`: the maps, per-step records and particle snapshots.

    Lists indexed by iterate ``k = 0 .. steps`` (``fits`` and the ``change`` lists by step
    ``1 .. steps``, so ``fits[k - 1]`` produced iterate ``k``). Free energies in nats.
    ``change_eval[k - 1]`` is ``F_k - F_{k-1}`` on the held-out particles, estimated from the
    same particles before and after the step (paired), so its standard error
    ``change_eval_se`` is much smaller than that of either free energy.
    """

    target: Target
    config: JKOConfig
    initial: FlowModel
    maps: list[Flow] = field(default_factory=list)
    fits: list[StepFit] = field(default_factory=list)
    free_energy_fit: list[float] = field(default_factory=list)
    free_energy_eval: list[float] = field(default_factory=list)
    free_energy_eval_se: list[float] = field(default_factory=list)
    change_eval: list[float] = field(default_factory=list)
    change_eval_se: list[float] = field(default_factory=list)
    snapshots: dict[int, Tensor] = field(default_factory=dict)
    particles: Particles | None = None
    eval_particles: Particles | None = None

    @property
    def times(self) -> list[float]:
        return [k * self.config.tau for k in range(len(self.free_energy_eval))]

    def model(self, k: int | None = None) -> FlowModel:
        """The density of iterate ``k`` (default: the last) as a normalizing flow:
        ``T_k o ... o T_1`` applied after the initial model's flow, on its base."""
        k = len(self.maps) if k is None else k
        if not 0 <= k <= len(self.maps):
            raise ValueError(f"iterate {k} does not exist; this run has 0 .. {len(self.maps)}.")
        if k == 0:
            return self.initial
        return FlowModel(Compose(self.initial.flow, *self.maps[:k]), base=self.initial.base)


def flow_jko(initial: FlowModel, target: Target, config: JKOConfig, steps: int,
             make_map: Callable[[], Flow], *, particles: int = 2000, eval_particles: int = 2000,
             generator: torch.Generator | None = None,
             snapshot_at: Sequence[int] = ()) -> JKORun:
    """Run ``steps`` flow-based JKO steps from ``initial`` towards ``target``.

    Args:
        initial: the iterate ``p_0`` as a flow model (it must sample with exact log-densities,
            see :func:`gaussian_start`); its dtype is used throughout.
        target: ``pi`` with its potential and ``log Z``.
        config: time step and optimiser (:class:`JKOConfig`).
        steps: number of JKO steps (final time ``steps * tau``).
        make_map: builds a fresh map ``T`` for each step, starting at the identity.
        particles: number of fitting particles; eval_particles: number of held-out particles
            used only to estimate the free energy (and for snapshots).
        snapshot_at: iterates whose evaluation particles are kept in ``run.snapshots``.
    Returns:
        a :class:`JKORun`.
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"flow_jko: steps must be a non-negative int, got {steps!r}.")
    for name, n in (("particles", particles), ("eval_particles", eval_particles)):
        if not isinstance(n, int) or n < 2:
            raise ValueError(f"flow_jko: {name} must be an int >= 2, got {n!r}.")
    if tuple(initial.event_shape) != (target.dim,):
        raise ValueError(f"flow_jko: the initial model has event shape {initial.event_shape} "
                         f"but the target is {target.dim}-dimensional.")
    g = generator or torch.Generator().manual_seed(0)
    with torch.no_grad():
        fit_set = Particles(*initial.sample_and_log_prob(particles, generator=g))
        eval_set = Particles(*initial.sample_and_log_prob(eval_particles, generator=g))
    dtype = fit_set.x.dtype
    run = JKORun(target, config, initial)

    previous: list[Tensor] = []

    def record(k: int) -> None:
        run.free_energy_fit.append(fit_set.free_energy(target)[0])
        terms = eval_set.free_energy_terms(target)
        mean, se = mean_se(terms)
        run.free_energy_eval.append(mean)
        run.free_energy_eval_se.append(se)
        if previous:
            diff = terms - previous[0]
            mean, se = mean_se(diff)
            run.change_eval.append(mean)
            run.change_eval_se.append(se)
        previous[:] = [terms]
        if k in snapshot_at:
            run.snapshots[k] = eval_set.x.clone()

    record(0)
    for k in range(1, steps + 1):
        t_map = make_map()
        if not isinstance(t_map, Flow):
            raise TypeError(f"make_map must return a Flow, got {type(t_map).__name__}.")
        t_map = t_map.to(dtype)
        run.fits.append(fit_jko_map(t_map, fit_set.x, target, config))
        for p in t_map.parameters():
            p.requires_grad_(False)
        run.maps.append(t_map)
        fit_set, eval_set = fit_set.push(t_map), eval_set.push(t_map)
        record(k)
    run.particles, run.eval_particles = fit_set, eval_set
    return run


# --------------------------------------------------------------------------- building blocks


def gaussian_start(mean: Sequence[float], std: Sequence[float],
                   dtype: torch.dtype = torch.float32) -> FlowModel:
    """``N(mean, diag(std^2))`` as a flow model (an elementwise affine map of ``N(0, I)``)."""
    m = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
    s = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
    if m.shape != s.shape:
        raise ValueError(f"gaussian_start: mean and std must have the same length, got "
                         f"{m.numel()} and {s.numel()}.")
    if not bool((s > 0).all()) or not bool(torch.isfinite(m).all()):
        raise ValueError("gaussian_start: std must be > 0 and mean finite.")
    flow = ElementwiseAffine(m.numel(), log_scale=s.log(), shift=m)
    return FlowModel(flow).to(dtype)


def affine_map(features: int) -> Flow:
    """An elementwise affine JKO map (exact for Gaussian targets with diagonal covariance)."""
    return ElementwiseAffine(features)


def coupling_map(features: int = 2, layers: int = 4, hidden: int = 32, *,
                 scale_bound: float = 2.0,
                 activation: type[nn.Module] = nn.Tanh) -> Flow:
    """A small RealNVP-style JKO map: an elementwise affine layer then ``layers`` affine
    couplings with alternating masks. Starts at the identity (zero last layers).

    Smooth activations (``tanh``) keep the map, and so the transported density, smooth.
    """
    couplings = [AffineCoupling(m, hidden=hidden, depth=2, scale_bound=scale_bound,
                                activation=activation)
                 for m in coupling_masks(features, layers, "halves")]
    return Compose(ElementwiseAffine(features), *couplings)

