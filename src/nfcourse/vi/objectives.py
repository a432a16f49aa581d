"""Variational objectives for :func:`nfcourse.training.engine.fit`, and the ELBO estimate.

Reverse KL. For a flow ``q`` (a :class:`~nfcourse.core.model.FlowModel`) and an unnormalised
target ``p~ = exp(-U)`` with ``Z = \\int p~``,

    KL(q || p) = E_q[log q(x) + U(x)] + log Z,     so     ELBO = E_q[-U(x) - log q(x)] <= log Z,

with equality exactly when ``q = p``. The expectation needs samples of ``q`` only (never of
``p``): ``x = f(z)`` with ``z`` from the base, and ``log q(x) = log p_base(z) - log|det df/dz|``
comes with the sample, so the loss is differentiable in the flow's parameters through ``x``
(the reparameterisation trick). :class:`ReverseKL` is that loss as an objective for the
engine: its ``data`` is the base sampler (``objective.noise``), a batch is a draw of base
noise, and the held-out set is one fixed draw of noise, so every evaluation scores the same
``z``.

Forward KL ``KL(p || q) = E_p[log p - log q]`` needs samples of ``p``; minimising it is
maximum likelihood on them: :class:`nfcourse.training.objectives.MaximumLikelihood`, which
``fit(model, target_sampler, config)`` uses by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nfcourse.core.model import FlowModel
from nfcourse.core.validation import check_count, check_tensor, module_dtype_device, validation
from nfcourse.metrics.stats import mean_se
from nfcourse.training.engine import History, TrainConfig, fit
from nfcourse.training.objectives import draw_rows

LogDensity = Callable[[Tensor], Tensor]

__all__ = ["ReverseKL", "ElboEstimate", "log_weights", "elbo", "fit_reverse_kl"]


def _target_log_density(target: object) -> LogDensity:
    """``-U`` from an :class:`~nfcourse.vi.energies.Energy` (its ``potential``) or any
    callable ``[B, D] -> [B]`` that returns an unnormalised log-density."""
    potential = getattr(target, "potential", None)
    if callable(potential):
        return lambda x: -potential(x)
    if callable(target):
        return target  # type: ignore[return-value]
    raise TypeError(f"expected an Energy or a callable log-density [B, D] -> [B], got "
                    f"{type(target).__name__}.")


def log_weights(model: FlowModel, target: object, z: Tensor) -> tuple[Tensor, Tensor]:
    """Samples ``x = f(z)`` of ``q`` and their log-weights ``log p~(x) - log q(x)``.

    ``z [B, D]`` is base noise; ``target`` an Energy or an unnormalised log-density.
    Returns ``(x [B, D], log_w [B])``, differentiable in the model's parameters.
    """
    log_p = _target_log_density(target)
    x, logdet = model.flow._forward(z)
    log_q = model.base.log_prob(z) - logdet  # type: ignore[operator]
    return x, log_p(x) - log_q


class ReverseKL(nn.Module):
    """``-ELBO = E_q[log q(x) + U(x)]`` as an objective for :func:`fit` (nats per sample).

    Args:
        model: the variational flow ``q``.
        target: an :class:`~nfcourse.vi.energies.Energy` or an unnormalised log-density
            ``[B, D] -> [B]`` (e.g. a log-joint, for a posterior).

    Train with ``fit(objective, objective.noise, config)``: ``draw`` takes ``n`` base samples
    from the engine's data generator, the held-out set is ``config.eval_size`` base samples
    drawn once, and ``evaluate`` is the mean ``-ELBO`` on them (deterministic).
    """

    def __init__(self, model: FlowModel, target: object) -> None:
        super().__init__()
        if not isinstance(model, FlowModel):
            raise TypeError(f"ReverseKL: expected a FlowModel (a flow and its base), got "
                            f"{type(model).__name__}; wrap a flow with nf.FlowModel(flow).")
        self.model = model
        self.log_p = _target_log_density(target)
        self._target = target

    def noise(self, n: int, generator: torch.Generator) -> Tensor:
        """The engine's ``data``: ``n`` base samples ``[n, D]`` drawn with ``generator`` (CPU),
        on the model's device and dtype."""
        n = check_count(n, "ReverseKL.noise(n)")
        dtype, device = module_dtype_device(self.model)
        z = torch.randn((n, *self.model.event_shape), generator=generator, dtype=dtype)
        return z.to(device)

    def draw(self, data: Tensor | Callable[[int, torch.Generator], Tensor], n: int,
             generator: torch.Generator, noise_generator: torch.Generator) -> Tensor:
        return draw_rows(data, n, generator)

    def loss(self, z: Tensor) -> Tensor:
        return -log_weights(self.model, self._target, z)[1].mean()

    def forward(self, z: Tensor) -> Tensor:
        return self.loss(z)

    def evaluate(self, held_out: Tensor) -> float:
        check_tensor(held_out, self.model.event_shape, name="ReverseKL.evaluate(held_out)")
        with torch.no_grad():
            return float(-log_weights(self.model, self._target, held_out)[1].double().mean())


@dataclass(frozen=True)
class ElboEstimate:
    """A Monte-Carlo ELBO: ``value ± se`` (nats) from ``n`` samples; ``log_w`` are the
    per-sample log-weights ``log p~(x) - log q(x)`` (float64, CPU), ``x`` the samples."""

    value: float
    se: float
    n: int
    log_w: Tensor
    x: Tensor

    def gap(self, log_z: float) -> float:
        """``log Z - ELBO`` = ``KL(q || p)`` (estimated)."""
        return log_z - self.value


@torch.no_grad()
def elbo(model: FlowModel, target: object, n: int = 20_000, seed: int = 0,
         batch: int = 10_000) -> ElboEstimate:
    """Estimate the ELBO of ``model`` for ``target`` from ``n`` fresh samples of ``q`` (base
    noise seeded by ``seed``, drawn in float64 on the CPU and cast to the model's dtype)."""
    n = check_count(n, "elbo(n)")
    if n < 2:
        raise ValueError(f"elbo: need n >= 2 samples for a standard error, got {n}.")
    dtype, device = module_dtype_device(model)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, *model.event_shape), generator=g, dtype=torch.float64)
    was = model.training
    model.eval()
    xs, ws = [], []
    try:
        with validation(False):
            for part in z.split(batch):
                x, lw = log_weights(model, target, part.to(device, dtype))
                xs.append(x.double().cpu())
                ws.append(lw.double().cpu())
    finally:
        model.train(was)
    log_w = torch.cat(ws)
    if not bool(torch.isfinite(log_w).all()):
        raise FloatingPointError("elbo: some log-weights are not finite; the flow maps samples "
                                 "where the target has no mass (check the target's potential).")
    value, se = mean_se(log_w)
    return ElboEstimate(value, se, n, log_w, torch.cat(xs))


def fit_reverse_kl(model: FlowModel, target: object, config: TrainConfig, *,
                   progress: bool = False) -> History:
    """Train ``model`` in place by reverse KL with :func:`fit` (the one loop); returns the
    History, whose losses are ``-ELBO`` in nats."""
    objective = ReverseKL(model, target)
    return fit(objective, objective.noise, config, progress=progress)
