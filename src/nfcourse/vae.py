"""A variational auto-encoder for vectors, and the bounds it gives on ``log p(x)``.

Generative model: ``z ~ N(0, I_latent)``, ``x | z ~ N(mu_theta(z), diag(exp(v_theta(z))))``
(a Gaussian decoder with a learned, point-dependent variance). Inference model:
``q_phi(z | x) = N(m_phi(x), diag(exp(s_phi(x))))``. The marginal ``p(x) = E_{p(z)} p(x | z)``
has no closed form, so a VAE reports lower bounds on ``log p(x)``:

* the **ELBO** ``E_q[log p(x | z)] - KL(q(z | x) || p(z))``, here with the KL in closed form;
* the **importance-weighted bound** ``IWAE_k = E[log (1/k) sum_i w_i]`` with
  ``w_i = p(x, z_i) / q(z_i | x)`` and ``z_1..z_k ~ q`` i.i.d. (Burda et al., 2016).
  ``IWAE_1`` has the ELBO's expectation, ``IWAE_k`` never decreases with ``k`` in expectation,
  and it tends to ``log p(x)`` as ``k -> infinity``.

Large ``k`` is computed in chunks of points and samples (at most ``max_elements`` latent draws
in memory at once), combining the chunks with a running log-sum-exp, so ``k = 1000`` on tens
of thousands of points fits in a few megabytes.

Training goes through the one loop, :func:`nfcourse.training.engine.fit`: pass it
:class:`ELBOObjective` (the negative ELBO as a training objective).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nfcourse.metrics.stats import mean_se
from nfcourse.nn import mlp
from nfcourse.core.validation import check_tensor, module_dtype_device

_LOG_2PI = math.log(2 * math.pi)


def _gaussian_log_prob(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """``log N(x; mean, diag(exp(log_var)))`` summed over the last dimension."""
    return -0.5 * (_LOG_2PI + log_var + (x - mean) ** 2 * torch.exp(-log_var)).sum(-1)


def _check_k(k: object, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name} must be a positive int (the number of importance samples), "
                         f"got {k!r}.")
    return k


class VAE(nn.Module):
    """A Gaussian-encoder, Gaussian-decoder VAE for ``[B, features]`` data.

    Args:
        features: data dimension; latent: latent dimension.
        hidden, depth: width and number of hidden layers of both MLPs (``depth=0`` makes both
            maps affine, a linear-Gaussian model whose ``log p(x)`` is known in closed form).
        log_var_bound: both networks' log-variances pass through ``b * tanh(raw / b)``, which
            keeps standard deviations within ``exp(+-b/2)`` so one bad step cannot overflow.
    """

    def __init__(self, features: int = 2, latent: int = 2, hidden: int = 64, depth: int = 2,
                 *, log_var_bound: float = 9.0, zero_last: bool = False) -> None:
        super().__init__()
        for name, value in (("features", features), ("latent", latent), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VAE: {name} must be a positive int, got {value!r}.")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"VAE: depth must be an int >= 0, got {depth!r}.")
        if not log_var_bound > 0:
            raise ValueError(f"VAE: log_var_bound must be > 0, got {log_var_bound!r}.")
        self.features, self.latent, self.log_var_bound = features, latent, float(log_var_bound)
        self.encoder = mlp(features, 2 * latent, hidden, depth, nn.SiLU, zero_last)
        self.decoder = mlp(latent, 2 * features, hidden, depth, nn.SiLU, zero_last)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.features,)

    def _check(self, x: object, name: str) -> Tensor:
        dtype, device = module_dtype_device(self)
        return check_tensor(x, (self.features,), name=name, dtype=dtype, device=device)

    def _bound(self, raw: Tensor) -> Tensor:
        b = self.log_var_bound
        return b * torch.tanh(raw / b)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``q(z | x)``: mean and log-variance, each ``[B, latent]``."""
        mean, raw = self.encoder(x).chunk(2, dim=-1)
        return mean, self._bound(raw)

    def decode(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``p(x | z)``: mean and log-variance, each ``[..., features]``."""
        mean, raw = self.decoder(z).chunk(2, dim=-1)
        return mean, self._bound(raw)

    def _noise(self, shape: tuple[int, ...], like: Tensor,
               generator: torch.Generator | None) -> Tensor:
        if generator is None:
            return torch.randn(shape, dtype=like.dtype, device=like.device)
        if generator.device.type != like.device.type:
            raise ValueError(f"VAE: the generator lives on '{generator.device}' but the data on "
                             f"'{like.device}'; create it with torch.Generator("
                             f"device='{like.device.type}').")
        return torch.randn(shape, dtype=like.dtype, device=like.device, generator=generator)

    def elbo_terms(self, x: Tensor, generator: torch.Generator | None = None,
                   noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The ELBO's two terms per point, ``[B]`` each: a reparameterised one-sample estimate
        of ``E_q[log p(x | z)]`` and the closed-form ``KL(q(z | x) || N(0, I))``. The
        standard-normal draw ``noise [B, latent]`` is drawn from ``generator`` unless given."""
        x = self._check(x, "VAE.elbo: x")
        mean, log_var = self.encode(x)
        eps = self._noise(tuple(mean.shape), mean, generator) if noise is None else noise
        z = mean + torch.exp(0.5 * log_var) * eps
        x_mean, x_log_var = self.decode(z)
        recon = _gaussian_log_prob(x, x_mean, x_log_var)
        kl = 0.5 * (torch.exp(log_var) + mean**2 - 1.0 - log_var).sum(-1)
        return recon, kl

    def elbo(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One-sample ELBO per point, ``[B]`` nats (differentiable; used for training)."""
        recon, kl = self.elbo_terms(x, generator)
        return recon - kl

    def _log_weights(self, x: Tensor, mean: Tensor, log_var: Tensor, k: int,
                     generator: torch.Generator | None) -> Tensor:
        """``log p(x, z_i) - log q(z_i | x)`` for ``k`` fresh ``z_i ~ q``: ``[b, k]``."""
        eps = self._noise((x.shape[0], k, self.latent), mean, generator)
        std = torch.exp(0.5 * log_var)[:, None, :]
        z = mean[:, None, :] + std * eps
        x_mean, x_log_var = self.decode(z)
        log_px_z = _gaussian_log_prob(x[:, None, :], x_mean, x_log_var)
        log_pz = -0.5 * (_LOG_2PI + z**2).sum(-1)
        log_qz = -0.5 * (_LOG_2PI + log_var[:, None, :] + eps**2).sum(-1)
        return log_px_z + log_pz - log_qz

    @torch.no_grad()
    def log_weights(self, x: Tensor, k: int, generator: torch.Generator | None = None,
                    *, max_elements: int = 1 << 20) -> Tensor:
        """All ``k`` log importance weights per point, ``[B, k]`` (chunked over points and
        samples so at most ``max_elements`` latent draws are decoded at once)."""
        x = self._check(x, "VAE.log_weights: x")
        k = _check_k(k)
        if max_elements < 1:
            raise ValueError(f"max_elements must be >= 1, got {max_elements}.")
        mean, log_var = self.encode(x)
        rows = max(1, max_elements // k)
        k_step = min(k, max_elements)
        out = []
        for start in range(0, x.shape[0], rows):
            sl = slice(start, start + rows)
            out.append(torch.cat([
                self._log_weights(x[sl], mean[sl], log_var[sl], min(k_step, k - j), generator)
                for j in range(0, k, k_step)], dim=1))
        return torch.cat(out) if out else x.new_zeros(0, k)

    @torch.no_grad()
    def iwae(self, x: Tensor, k: int, generator: torch.Generator | None = None,
             *, max_elements: int = 1 << 20) -> Tensor:
        """One draw of the importance-weighted bound per point, ``[B]`` nats:
        ``log (1/k) sum_i w_i`` with ``k`` samples; memory stays bounded for any ``k``."""
        x = self._check(x, "VAE.iwae: x")
        k = _check_k(k)
        if max_elements < 1:
            raise ValueError(f"max_elements must be >= 1, got {max_elements}.")
        mean, log_var = self.encode(x)
        rows = max(1, max_elements // k) if k <= max_elements else 1
        k_step = min(k, max_elements)
        out = []
        for start in range(0, x.shape[0], rows):
            sl = slice(start, start + rows)
            running = None  # running log-sum-exp over the sample chunks
            for j in range(0, k, k_step):
                lw = self._log_weights(x[sl], mean[sl], log_var[sl], min(k_step, k - j),
                                       generator)
                part = torch.logsumexp(lw, dim=1)
                running = part if running is None else torch.logaddexp(running, part)
            assert running is not None
            out.append(running - math.log(k))
        return torch.cat(out) if out else x.new_zeros(0)


class ELBOObjective(nn.Module):
    """The VAE's training objective for :func:`nfcourse.training.engine.fit`: the negative ELBO.

    ``data`` is a sampler ``(n, generator) -> [n, features]`` or a tensor ``[N, features]``; a
    batch is ``(x, eps)``, the points and the reparameterisation noise ``eps [n, latent]``,
    drawn on the model's device from the engine's noise generator (so a resumed run draws the
    same noise). Loss: the mean negative one-sample ELBO in nats per point; with
    ``kl_warmup = n > 0`` its KL term is multiplied by ``min(1, t / n)`` at the ``t``-th
    training step (KL annealing, Bowman et al. 2016): early on the decoder learns to use ``z``
    before the KL pulls ``q(z | x)`` to the prior, which avoids the collapsed optimum where
    ``x`` ignores ``z``. Evaluation: the mean negative ELBO with the full KL and noise seeded
    by ``eval_seed``, the same at every evaluation. ``log_prob`` is the one-sample ELBO (a
    stochastic lower bound on ``log p``). The objective is its own ``model``: the checkpoint
    builder ``"vae_elbo"`` rebuilds all of it.
    """

    def __init__(self, vae: VAE, kl_warmup: int = 0, eval_seed: int = 0) -> None:
        super().__init__()
        if isinstance(kl_warmup, bool) or not isinstance(kl_warmup, int) or kl_warmup < 0:
            raise ValueError(f"ELBOObjective: kl_warmup must be an int >= 0 (training steps), "
                             f"got {kl_warmup!r}.")
        self.vae, self.kl_warmup, self.calls, self.eval_seed = vae, kl_warmup, 0, eval_seed

    # The warm-up counter is training state: it travels in state_dict() (as "_extra_state"),
    # so a run resumed from a checkpoint continues the KL schedule where it stopped.
    def get_extra_state(self) -> dict[str, int]:
        return {"calls": int(self.calls)}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.calls = int(state["calls"])

    @property
    def model(self) -> ELBOObjective:
        return self

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.vae.event_shape

    def log_prob(self, x: Tensor) -> Tensor:
        return self.vae.elbo(x)

    def draw(self, data: Tensor | Callable[[int, torch.Generator], Tensor], n: int,
             generator: torch.Generator, noise_generator: torch.Generator
             ) -> tuple[Tensor, Tensor]:
        if callable(data):
            x = data(n, generator)
        else:
            x = data[torch.randint(0, data.shape[0], (n,), generator=generator)]
        eps = torch.randn((n, self.vae.latent), generator=noise_generator, dtype=x.dtype,
                          device=noise_generator.device)
        return x, eps

    def loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, eps = batch
        recon, kl = self.vae.elbo_terms(x, noise=eps)
        beta = 1.0
        if self.training:
            self.calls += 1
            if self.kl_warmup:
                beta = min(1.0, self.calls / self.kl_warmup)
        return -(recon - beta * kl).mean()

    def forward(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        return self.loss(batch)

    @torch.no_grad()
    def evaluate(self, held_out: Tensor) -> float:
        device = held_out.device
        g = torch.Generator(device=device).manual_seed(self.eval_seed)
        return float(-self.vae.elbo(held_out, g).double().mean())


def elbo_objective(features: int = 2, latent: int = 2, hidden: int = 64, depth: int = 2, *,
                   log_var_bound: float = 9.0, zero_last: bool = False,
                   kl_warmup: int = 0) -> ELBOObjective:
    """A new :class:`VAE` wrapped in :class:`ELBOObjective`: the checkpoint builder
    ``"vae_elbo"``, i.e. ``fit(elbo_objective(...), ..., model_spec={"name": "vae_elbo",
    "kwargs": ...})`` can be reloaded with :func:`nfcourse.training.checkpoint.load_model`."""
    vae = VAE(features, latent, hidden, depth, log_var_bound=log_var_bound, zero_last=zero_last)
    return ELBOObjective(vae, kl_warmup)


@dataclass(frozen=True)
class BoundCurve:
    """Lower bounds on ``log p(x)`` averaged over test points (nats).

    ``iwae[k] = (mean, se)`` over points, where each point's value averages ``K // k``
    independent ``IWAE_k`` draws made from disjoint groups of one set of ``K = max(ks)``
    importance weights; ``elbo = (mean, se)`` uses the closed-form-KL ELBO with fresh samples.
    ``per_point[k]`` keeps the per-point values (``[n]``, float64) for paired comparisons.
    """

    ks: tuple[int, ...]
    iwae: dict[int, tuple[float, float]]
    elbo: tuple[float, float]
    per_point: dict[int, Tensor]
    elbo_per_point: Tensor


@torch.no_grad()
def bound_curve(vae: VAE, x: Tensor, ks: Sequence[int] = (1, 2, 5, 10, 20, 50, 100, 200, 500,
                                                          1000),
                generator: torch.Generator | None = None, *,
                max_elements: int = 1 << 20) -> BoundCurve:
    """ELBO and ``IWAE_k`` for every ``k`` in ``ks`` on the points ``x`` (see :class:`BoundCurve`).

    All ``k`` share one set of ``max(ks)`` importance weights per point (drawn in chunks), so
    the whole curve costs as much as ``IWAE_max(ks)`` alone.
    """
    ks = tuple(_check_k(k, "each k in ks") for k in ks)
    if not ks:
        raise ValueError("bound_curve: ks is empty; pass e.g. (1, 10, 100, 1000).")
    big = max(ks)
    x = vae._check(x, "bound_curve: x")
    per_point: dict[int, list[Tensor]] = {k: [] for k in ks}
    rows = max(1, max_elements // big)
    for part in x.split(rows):
        lw = vae.log_weights(part, big, generator, max_elements=max_elements).double()
        for k in ks:
            groups = big // k
            g = lw[:, : groups * k].reshape(part.shape[0], groups, k)
            per_point[k].append((torch.logsumexp(g, dim=2) - math.log(k)).mean(1))
    values = {k: torch.cat(v) for k, v in per_point.items()}
    elbo = torch.cat([vae.elbo(part, generator).double() for part in x.split(8192)])
    return BoundCurve(ks=ks, iwae={k: mean_se(v) for k, v in values.items()},
                      elbo=mean_se(elbo), per_point=values, elbo_per_point=elbo)


@torch.no_grad()
def grid_log_prob(vae: VAE, x: Tensor, *, limit: float = 6.0, nodes: int = 256,
                  rows: int = 64) -> Tensor:
    """The VAE's exact marginal ``log p_theta(x) = log int N(z; 0, I) p_theta(x | z) dz`` by
    quadrature, for a **2-D latent**: ``x [B, features] -> [B]`` nats, float64.

    The midpoint rule on a ``nodes x nodes`` grid over ``[-limit, limit]^2`` (the prior puts
    less than ``4 * Phi(-limit)`` of its mass outside; about 4e-9 for ``limit = 6``). The decoder
    runs once on the grid; ``log p(x | z_j)`` for all points and nodes is then one matrix
    product, since ``(x - mu)^2 / s^2`` expands into terms in ``x^2`` and ``x``. No encoder is
    involved, so unlike ELBO and IWAE this is not a bound. Check convergence by comparing two
    values of ``nodes``; the grid must resolve the posterior ``p_theta(z | x)``.
    """
    if vae.latent != 2:
        raise ValueError(f"grid_log_prob: the grid is 2-D, so the VAE's latent must be 2, got "
                         f"{vae.latent}; use iwae() with a large k otherwise.")
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 2:
        raise ValueError(f"grid_log_prob: nodes must be an int >= 2, got {nodes!r}.")
    if not (isinstance(limit, (int, float)) and math.isfinite(limit) and limit > 0):
        raise ValueError(f"grid_log_prob: limit must be a finite number > 0, got {limit!r}.")
    x = vae._check(x, "grid_log_prob: x").double()
    dtype, device = module_dtype_device(vae)
    h = 2 * limit / nodes
    u = -limit + h * (torch.arange(nodes, dtype=torch.float64, device=device) + 0.5)
    z = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)   # [G, 2]
    mean, log_var = (t.double() for t in vae.decode(z.to(dtype)))            # [G, features]
    inv_var = torch.exp(-log_var)
    # log N(z) + log(cell area) + the parts of log N(x; mean, var) that do not involve x
    const = (-0.5 * (_LOG_2PI + z**2).sum(-1) + 2 * math.log(h)
             - 0.5 * (_LOG_2PI + log_var + mean**2 * inv_var).sum(-1))       # [G]
    coef = torch.cat([-0.5 * inv_var, mean * inv_var], dim=-1).T             # [2F, G]
    out = [torch.logsumexp(torch.cat([part**2, part], dim=-1) @ coef + const, dim=1)
           for part in x.split(rows)]
    return torch.cat(out) if out else x.new_zeros(0)
