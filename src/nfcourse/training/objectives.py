"""Training objectives for :func:`nfcourse.training.engine.fit`, and the image likelihoods.

An *objective* is an ``nn.Module`` that owns everything trained (the model, and e.g. a learned
dequantiser) and answers three questions; :func:`nfcourse.training.engine.fit` needs no more:

* ``draw(data, n, generator, noise_generator) -> batch``: the next global batch of ``n``
  examples (a tensor or a tuple of tensors, rows along dim 0). ``generator`` is a CPU
  generator for picking data; ``noise_generator`` lives on the objective's device, for noise
  drawn there. Both belong to the engine, which checkpoints them, so a resumed run draws the
  same batches.
* ``loss(batch) -> scalar`` (also ``objective(batch)``, so DDP can wrap the module): the
  training loss, a mean over the batch.
* ``evaluate(held_out) -> float``: the same loss on held-out data, deterministic (fixed noise),
  so every evaluation of a run compares like with like.

``objective.model`` is what a ``model_spec`` rebuilds (its ``state_dict`` is the checkpoint's
``"model"``). Units: the ones here are in nats, per point or per image; bits/dim for 8-bit
images is :func:`nfcourse.data.images.bits_per_dim` of a per-image value.

This module holds the maximum-likelihood objective (:class:`MaximumLikelihood`) and the image
dequantisation ELBO (:class:`ImageELBO`) with its per-image and aggregate scores. The VAE's ELBO
is :class:`nfcourse.vae.ELBOObjective`, conditional flow matching's
:class:`nfcourse.matching.train.CFMObjective`, the JKO step's
:class:`nfcourse.jko.solver.JKOStepObjective`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from nfcourse.core.model import FlowModel
from nfcourse.core.validation import check_tensor, module_dtype_device
from nfcourse.data.images import (LEVELS, UniformDequantizer, bits_per_dim, check_pixels,
                                  dequantize)
from nfcourse.metrics.stats import mean_se

Sampler = Callable[[int, torch.Generator], Tensor]


def draw_rows(data: Tensor | Sampler, n: int, generator: torch.Generator) -> Tensor:
    """``n`` fresh points from a sampler ``(n, generator) -> [n, ...]``, or ``n`` random rows of
    a tensor ``[N, ...]`` (with replacement), all from ``generator``."""
    if callable(data):
        return data(n, generator)
    return data[torch.randint(0, data.shape[0], (n,), generator=generator)]


def _device(module: nn.Module) -> torch.device:
    return module_dtype_device(module)[1] or torch.device("cpu")


@torch.no_grad()
def evaluate_nll(model: nn.Module, x: Tensor, batch: int = 8192) -> float:
    """Mean NLL (nats) of ``model.log_prob`` over ``x: [N, *event]``, in chunks, eval mode."""
    was_training = model.training
    model.eval()
    try:
        total = sum(float(-model.log_prob(part).double().sum())  # type: ignore[operator]
                    for part in x.split(batch))
    finally:
        model.train(was_training)
    return total / x.shape[0]


class MaximumLikelihood(nn.Module):
    """Maximum likelihood of a density model on vectors (or any event shape).

    ``model`` has ``log_prob: [B, *event] -> [B]`` (and may have ``nll: [B, *event] ->
    scalar``, used for the loss when present, e.g. FFJORD's stochastic trace). Loss and
    evaluation: the mean negative log-likelihood in nats per point. ``data`` is a sampler
    ``(n, generator) -> [n, *event]`` or a tensor ``[N, *event]``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._checked = False  # validate the stream once: per-step checks would cost syncs

    def _check(self, x: object, what: str) -> Tensor:
        return check_tensor(x, getattr(self.model, "event_shape", None), name=f"fit: {what}")

    def draw(self, data: Tensor | Sampler, n: int, generator: torch.Generator,
             noise_generator: torch.Generator) -> Tensor:
        if not self._checked:
            if not callable(data):
                self._check(data, "training data")
            x = self._check(draw_rows(data, n, generator), "a training batch")
            self._checked = True
            return x
        return draw_rows(data, n, generator)

    def loss(self, x: Tensor) -> Tensor:
        nll = getattr(self.model, "nll", None)
        return nll(x) if callable(nll) else -self.model.log_prob(x).mean()  # type: ignore[operator]

    def forward(self, x: Tensor) -> Tensor:
        return self.loss(x)

    def evaluate(self, held_out: Tensor) -> float:
        return evaluate_nll(self.model, self._check(held_out, "eval_data"))


# ----------------------------------------------------------------------------- images


def image_nll(model: FlowModel, v: Tensor, dequantizer: nn.Module | None = None,
              generator: torch.Generator | None = None,
              noise: Tensor | None = None, *, levels: int = LEVELS) -> Tensor:
    """Per-image ``-(log p(y) - log q(u | v))`` in nats ``[B]``: the negative dequantisation
    ELBO of integer images ``v [B, C, H, W]`` (``levels`` grey levels) under ``model``, a
    density on ``y`` in ``[0, 1)^D``. ``bits_per_dim(image_nll(...), D, levels)`` bounds
    ``-log2 P(v) / D`` from above."""
    dtype = module_dtype_device(model)[0] or torch.get_default_dtype()
    y, log_q = dequantize(v, dequantizer, generator, noise, levels=levels)
    return -(model.log_prob(y.to(dtype)) - log_q.to(dtype))


@torch.no_grad()
def per_image_nll(model: FlowModel, images: Tensor, dequantizer: nn.Module | None = None, *,
                  draws: int = 1, seed: int = 0, batch: int = 500,
                  levels: int = LEVELS) -> Tensor:
    """:func:`image_nll` of every image ``[N]`` (float64, nats, on the CPU), averaged over
    ``draws`` dequantisations with noise seeded by ``seed`` (same call, same numbers). Runs in
    eval mode and restores the previous modes."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}.")
    check_pixels(images, "images", levels)
    modules = [m for m in (model, dequantizer) if m is not None]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        g = torch.Generator().manual_seed(seed)
        device = _device(model)
        total = torch.zeros(len(images), dtype=torch.float64)
        for _ in range(draws):
            total += torch.cat([image_nll(model, part.to(device), dequantizer, g,
                                          levels=levels).double().cpu()
                                for part in images.split(batch)])
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    return total / draws


def per_image_bits_per_dim(model: FlowModel, images: Tensor,
                           dequantizer: nn.Module | None = None, *, draws: int = 1,
                           seed: int = 0, batch: int = 500, levels: int = LEVELS) -> Tensor:
    """Bits/dim of every image ``[N]`` (float64): :func:`per_image_nll` converted with
    :func:`~nfcourse.data.images.bits_per_dim`. Lower means more likely under the model."""
    nll = per_image_nll(model, images, dequantizer, draws=draws, seed=seed, batch=batch,
                        levels=levels)
    return bits_per_dim(nll, images[0].numel(), levels)  # type: ignore[return-value]


def evaluate_bits_per_dim(model: FlowModel, images: Tensor,
                          dequantizer: nn.Module | None = None, *, draws: int = 1,
                          seed: int = 0, batch: int = 500,
                          levels: int = LEVELS) -> tuple[float, float]:
    """Held-out bits/dim (mean over images of the per-image bound) and its standard error;
    ``levels`` as in :func:`image_nll`."""
    bits = per_image_bits_per_dim(model, images, dequantizer, draws=draws, seed=seed,
                                  batch=batch, levels=levels)
    return mean_se(bits)


class ImageELBO(nn.Module):
    """The dequantisation ELBO of a flow on 8-bit images, with an optional learned dequantiser.

    ``data`` is a uint8 tensor ``[N, C, H, W]``; a batch is ``(images, noise)``: random rows and
    their dequantisation noise, both from the CPU ``generator`` (the dequantisers draw on the
    CPU), so DDP ranks cut identical global batches. Loss and evaluation: the mean negative
    ELBO in nats per image (:func:`image_nll`); evaluation dequantises with noise seeded by
    ``eval_seed``, the same at every evaluation. ``bits_per_dim(value, C * H * W)`` converts.
    """

    def __init__(self, model: FlowModel, dequantizer: nn.Module | None = None, *,
                 eval_seed: int = 1, eval_batch: int = 500, levels: int = LEVELS) -> None:
        super().__init__()
        self.model = model
        self.dequantizer = dequantizer if dequantizer is not None else UniformDequantizer()
        self.eval_seed, self.eval_batch, self.levels = eval_seed, eval_batch, levels

    def draw(self, data: Tensor, n: int, generator: torch.Generator,
             noise_generator: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, len(data), (n,), generator=generator)
        noise = self.dequantizer.noise((n, *data.shape[1:]), generator)  # type: ignore[operator]
        return data[idx], noise

    def loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        v, noise = batch
        return image_nll(self.model, v, self.dequantizer, noise=noise, levels=self.levels).mean()

    def forward(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        return self.loss(batch)

    def evaluate(self, held_out: Tensor) -> float:
        return float(per_image_nll(self.model, held_out, self.dequantizer, seed=self.eval_seed,
                                   batch=self.eval_batch, levels=self.levels).mean())

    @torch.no_grad()
    def initialize_actnorms(self, images: Tensor, seed: int, n: int = 512) -> int:
        """Data-dependent ActNorm initialisation from ``n`` uniformly dequantised training
        images drawn with ``seed`` (the same on every DDP rank, before DDP copies weights)."""
        from nfcourse.flows.glow import initialize_actnorms

        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, len(images), (min(n, len(images)),), generator=g)
        y, _ = dequantize(images[idx], None, g, levels=self.levels)
        dtype, device = module_dtype_device(self.model)
        return initialize_actnorms(self.model, y.to(device, dtype))

