"""Flows on 8-bit images: dequantisation, the logit transform, bits per dimension, models.

The chain from an 8-bit image ``v`` (integers 0..255, ``D`` pixels) to the latent ``z``::

    v  --dequantise-->  y = (v + u) / 256 in [0, 1)^D  --logit-->  x  --flow-->  z ~ N(0, I)

* **Dequantisation.** A continuous density on integers is meaningless (it can put infinite
  density on them), so each pixel is spread over its cell ``[v, v + 1) / 256``. For any
  density ``p`` on ``y`` and any noise distribution ``q(u | v)`` on ``[0, 1)^D``,
  Jensen's inequality gives a lower bound on the probability of the discrete image:

      log P(v) = log int p((v + u) / 256) / 256^D du
               >= E_q[log p((v + u) / 256) - log q(u | v)] - D log 256.

  Uniform dequantisation takes ``q = 1`` (:class:`UniformDequantizer`); variational
  dequantisation (Flow++) learns ``q`` (:class:`VariationalDequantizer`), which tightens the
  bound. The true ``P(v)`` is what bits/dim should measure; every number here is a bound on it.
* **Logit transform** (:class:`LogitTransform`): ``x = logit(alpha + (1 - 2 alpha) y)`` maps
  the box to the real line, where a Gaussian base lives; ``alpha`` keeps the values away
  from 0 and 1, where the logit explodes. Its log-det is exact and part of the density of
  ``y``: a ``FlowModel`` ending with it is a density on ``[0, 1)^D``.
* **Bits per dimension** (:func:`bits_per_dim`): ``-log2 P(v) / D``, from the density on ``y``
  by adding ``log 256`` per pixel. A model that knows nothing (uniform) scores exactly 8.

Models: :func:`tiny_realnvp` (the lecture's dense RealNVP) and :func:`multiscale_realnvp`
(convolutional, checkerboard and channel masks, squeeze and split between scales).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfcourse.core.flow import Compose, Flow, as_event_shape, sum_except_batch
from nfcourse.flows.coupling import soft_clamp
from nfcourse.flows.glow import ActNorm, ConvAffineCoupling, Split, squeeze2d, unsqueeze2d
from nfcourse.core.model import FlowModel
from nfcourse.data.images import (LEVELS, UniformDequantizer, bits_per_dim,
                                  check_pixels)
from nfcourse.nn import conv_net
from nfcourse.core.validation import check_count, module_dtype_device, validation_enabled



# ----------------------------------------------------------------------------- pixels


def _dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    dtype, device = module_dtype_device(model)
    return dtype or torch.get_default_dtype(), device or torch.device("cpu")


# ----------------------------------------------------------------------------- logit


class LogitTransform(Flow):
    """Between the unit box and the real line: ``x = (sigmoid(z) - alpha) / (1 - 2 alpha)``.

    Data -> latent (``inverse``): ``z = logit(alpha + (1 - 2 alpha) x)`` for ``x`` in
    ``[0, 1)``; ``alpha`` in ``[0, 0.5)`` keeps ``z`` finite even at ``x = 0``. With
    ``s = alpha + (1 - 2 alpha) x``, ``dz/dx = (1 - 2 alpha) / (s (1 - s))`` per pixel, so

        log|det dz/dx| = D log(1 - 2 alpha) - sum(log s + log(1 - s)),

    and ``forward`` returns the negative of that at the matching point. The lecture clips
    ``y`` to ``[alpha, 1 - alpha]`` instead; a clip is not invertible and has no density.
    """

    def __init__(self, event_shape: int | Sequence[int] | None = None,
                 alpha: float = 0.05) -> None:
        if not 0 <= alpha < 0.5:
            raise ValueError(f"LogitTransform: alpha must be in [0, 0.5), got {alpha}.")
        super().__init__(event_shape)
        self.alpha = float(alpha)

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        scale = 1 - 2 * self.alpha
        x = (torch.sigmoid(z) - self.alpha) / scale
        # log ds/dz = log s(z) + log s(-z), computed with logsigmoid to stay finite
        ld = F.logsigmoid(z) + F.logsigmoid(-z) - math.log(scale)
        return x, sum_except_batch(ld)

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s = self.alpha + (1 - 2 * self.alpha) * x
        if validation_enabled() and not bool(((s > 0) & (s < 1)).all()):
            lo, hi = -self.alpha / (1 - 2 * self.alpha), (1 - self.alpha) / (1 - 2 * self.alpha)
            raise ValueError(f"LogitTransform.inverse(x): x must lie in ({lo:.4g}, {hi:.4g}), "
                             f"which contains the box [0, 1] of dequantised pixels (v + u) / 256 "
                             f"for alpha > 0; got values outside.")
        z = torch.log(s) - torch.log1p(-s)
        ld = math.log(1 - 2 * self.alpha) - torch.log(s) - torch.log1p(-s)
        return z, sum_except_batch(ld)


class Reshape(Flow):
    """``forward``: ``[B, *latent_shape] -> [B, *data_shape]`` by a reshape (log-det 0)."""

    def __init__(self, latent_shape: Sequence[int], data_shape: Sequence[int]) -> None:
        a, b = as_event_shape(latent_shape), as_event_shape(data_shape)
        assert a is not None and b is not None
        if math.prod(a) != math.prod(b):
            raise ValueError(f"Reshape: {a} and {b} hold different numbers of values.")
        super().__init__(a, b)

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z.reshape(z.shape[0], *self.data_shape), z.new_zeros(z.shape[0])  # type: ignore

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.reshape(x.shape[0], *self.event_shape), x.new_zeros(x.shape[0])  # type: ignore


# ----------------------------------------------------------------------------- dequantisers


class VariationalDequantizer(nn.Module):
    """Flow++'s learned dequantisation noise: a small flow from logistic noise to
    ``(0, 1)^D``, conditioned on the image.

    ``e`` ~ standard logistic; ``h = mu(v) + exp(s(v)) * e`` (a conditional elementwise affine
    map), then one conditional checkerboard coupling on ``h``, then ``u = sigmoid(h)``. Every
    step is a bijection with a known log-det, so ``log q(u | v) = log p_logistic(e) -
    log|det du/de|`` is exact and ``E_q[log p((v + u)/256) - log q(u | v)]`` is a valid lower
    bound on ``log P(v) + D log 256``. The networks start at zero, and the sigmoid of a
    logistic variable is uniform: a new variational dequantiser *is* uniform dequantisation
    (``log q = 0``), so training can only tighten the bound.

    Args:
        channels: image channels; hidden: conv width of the conditioning networks.
    """

    def __init__(self, channels: int = 1, hidden: int = 16, scale_bound: float = 3.0) -> None:
        super().__init__()
        self.channels = int(channels)
        self.scale_bound = float(scale_bound)
        self.affine = conv_net(channels, 2 * channels, hidden)
        self.coupling = conv_net(2 * channels + 1, 2 * channels, hidden)

    def noise(self, shape: Sequence[int], generator: torch.Generator | None = None) -> Tensor:
        """Standard logistic noise ``logit(U)``, ``U`` uniform (kept away from 0 and 1)."""
        u = torch.rand(tuple(shape), generator=generator).clamp(1e-6, 1 - 1e-6)
        return torch.log(u) - torch.log1p(-u)

    def forward(self, v: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """``(u, log q(u | v))``: ``u`` in ``(0, 1)`` with the shape of ``v``."""
        e = noise.to(device=v.device, dtype=self.affine[-1].weight.dtype)
        cond = v.to(e.dtype) / (LEVELS - 1) - 0.5
        log_q = sum_except_batch(F.logsigmoid(e) + F.logsigmoid(-e))
        raw_s, mu = self.affine(cond).chunk(2, dim=1)
        s = soft_clamp(raw_s, self.scale_bound)
        h = mu + s.exp() * e
        log_q = log_q - sum_except_batch(s)
        mask = checkerboard_mask(v.shape[-2:], parity=0, device=v.device, dtype=e.dtype)
        kept = h * mask
        raw_s, t = self.coupling(torch.cat([kept, cond, mask.expand(v.shape[0], 1, -1, -1)],
                                           dim=1)).chunk(2, dim=1)
        s = soft_clamp(raw_s, self.scale_bound) * (1 - mask)
        h = h * s.exp() + t * (1 - mask)
        log_q = log_q - sum_except_batch(s)
        u = torch.sigmoid(h)
        log_q = log_q - sum_except_batch(F.logsigmoid(h) + F.logsigmoid(-h))
        return u, log_q


def dequantize(v: Tensor, dequantizer: nn.Module | None = None,
               generator: torch.Generator | None = None,
               noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Integer images ``v`` -> ``(y = (v + u) / 256, log q(u | v))``, both per image.

    ``dequantizer`` defaults to uniform noise; ``noise`` (from ``dequantizer.noise``) may be
    passed to reuse exactly the same draw (the trainer does, to shard a global batch).
    """
    check_pixels(v)
    dequantizer = dequantizer if dequantizer is not None else UniformDequantizer()
    if noise is None:
        noise = dequantizer.noise(v.shape, generator)
    u, log_q = dequantizer(v, noise)
    return (v.to(u.dtype) + u) / LEVELS, log_q


def image_nll(model: FlowModel, v: Tensor, dequantizer: nn.Module | None = None,
              generator: torch.Generator | None = None,
              noise: Tensor | None = None) -> Tensor:
    """Per-image ``-(log p(y) - log q(u | v))`` in nats: the negative ELBO on ``[0, 1)^D``.

    ``bits_per_dim(image_nll(...).mean(), D)`` bounds ``-log2 P(v) / D`` from above.
    """
    dtype, _ = _dtype_device(model)
    y, log_q = dequantize(v, dequantizer, generator, noise)
    return -(model.log_prob(y.to(dtype)) - log_q.to(dtype))


@torch.no_grad()
def evaluate_bits_per_dim(model: FlowModel, images: Tensor,
                          dequantizer: nn.Module | None = None, *, draws: int = 1,
                          seed: int = 0, batch: int = 500) -> tuple[float, float]:
    """Held-out bits/dim (mean over images of the per-image bound) and its standard error.

    Each image is dequantised ``draws`` times with noise seeded by ``seed``, so the same call
    gives the same number. Runs in eval mode and restores the previous mode.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}.")
    check_pixels(images)
    modules = [m for m in (model, dequantizer) if m is not None]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        g = torch.Generator().manual_seed(seed)
        device = _dtype_device(model)[1]
        dims = images[0].numel()
        per_image = torch.zeros(len(images), dtype=torch.float64)
        for _ in range(draws):
            parts = [image_nll(model, part.to(device), dequantizer, g).double().cpu()
                     for part in images.split(batch)]
            per_image += torch.cat(parts) / draws
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    bits = bits_per_dim(per_image, dims)
    return float(bits.mean()), float(bits.std() / math.sqrt(len(bits)))


# ----------------------------------------------------------------------------- masks


def checkerboard_mask(hw: Sequence[int], parity: int, device: torch.device | None = None,
                      dtype: torch.dtype | None = None) -> Tensor:
    """``[1, 1, H, W]`` with 1 where ``(i + j) % 2 == parity`` (the kept pixels)."""
    h, w = int(hw[0]), int(hw[1])
    ij = torch.arange(h, device=device)[:, None] + torch.arange(w, device=device)[None, :]
    return ((ij % 2) == parity).to(dtype or torch.get_default_dtype()).reshape(1, 1, h, w)


def checkerboard_vector(hw: Sequence[int], parity: int) -> Tensor:
    """The checkerboard as a flat bool mask ``[H * W]``, for dense couplings on images."""
    return checkerboard_mask(hw, parity).reshape(-1).bool()


# ----------------------------------------------------------------------------- layers


class CheckerboardCoupling(Flow):
    """RealNVP's spatial (checkerboard) affine coupling on images ``[B, C, H, W]``.

    Pixels with ``(i + j) % 2 == parity`` are kept; the others get ``x = z * exp(s) + t`` with
    ``(s, t)`` from a conv net that sees only the kept pixels (the rest zeroed) plus the mask
    as an extra channel, so it knows which positions are real. ``log|det| = sum(s)`` over the
    transformed pixels. The net's last layer starts at zero (identity at initialisation).
    """

    def __init__(self, event_shape: Sequence[int], parity: int, hidden: int = 64,
                 scale_bound: float = 3.0) -> None:
        shape = as_event_shape(event_shape)
        if shape is None or len(shape) != 3:
            raise ValueError(f"CheckerboardCoupling needs an image event_shape (C, H, W), got "
                             f"{event_shape!r}.")
        if parity not in (0, 1) or shape[1] * shape[2] < 2:
            raise ValueError(f"CheckerboardCoupling: parity must be 0 or 1 and the image must "
                             f"have at least 2 pixels; got parity {parity}, shape {shape}.")
        super().__init__(shape)
        self.register_buffer("mask", checkerboard_mask(shape[1:], parity))
        self.net = conv_net(shape[0] + 1, 2 * shape[0], hidden)
        self.scale_bound = float(scale_bound)

    def _scale_shift(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mask = self.mask
        inp = torch.cat([x * mask, mask.expand(x.shape[0], 1, -1, -1)], dim=1)
        raw_s, t = self.net(inp).chunk(2, dim=1)
        free = 1 - mask
        return soft_clamp(raw_s, self.scale_bound) * free, t * free

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._scale_shift(z)
        return z * s.exp() + t, sum_except_batch(s)

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._scale_shift(x)
        return (x - t) * (-s).exp(), -sum_except_batch(s)


class FlipChannels(Flow):
    """Reverse the channel order (a permutation, log-det 0), so that consecutive channel
    couplings (which keep the first half) alternate which half they transform."""

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z.flip(1), z.new_zeros(z.shape[0])

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.flip(1), x.new_zeros(x.shape[0])


def _checkerboard_block(shape: tuple[int, ...], n: int, hidden: int, first: int = 0
                        ) -> list[Flow]:
    """``n`` (ActNorm, checkerboard coupling) pairs with alternating parity, data -> latent
    order ActNorm then coupling, written in forward (latent -> data) order."""
    flows: list[Flow] = []
    for k in range(n):
        flows += [CheckerboardCoupling(shape, (first + k) % 2, hidden), ActNorm(shape)]
    return flows[::-1]


def _channel_block(shape: tuple[int, ...], n: int, hidden: int) -> list[Flow]:
    """``n`` channel couplings (glow's :class:`ConvAffineCoupling`), flipping in between."""
    flows: list[Flow] = []
    for k in range(n):
        flows += [ConvAffineCoupling(shape, hidden), ActNorm(shape)]
        if k < n - 1:
            flows.append(FlipChannels(shape))
    return flows[::-1]


class MultiScaleLevel(Flow):
    """One scale of a RealNVP-style multi-scale flow on ``[B, C, H, W]`` (onto itself).

    Data -> latent (``inverse``): ``checker`` checkerboard couplings at full resolution;
    squeeze to ``(4C, H/2, W/2)``; ``channel`` channel couplings; then, unless this is the
    last scale, glow's :class:`Split` factors out half the channels under a learned
    conditional Gaussian and the other half goes to the next scale. The last scale runs
    ``checker + 1`` checkerboard couplings and stops. Latents are reassembled in the image's
    layout, so a plain ``N(0, I)`` base on the whole image is the multi-scale prior.
    """

    def __init__(self, event_shape: Sequence[int], scales: int, hidden: int, checker: int = 3,
                 channel: int = 3) -> None:
        shape = as_event_shape(event_shape)
        assert shape is not None and len(shape) == 3
        super().__init__(shape)
        c, h, w = shape
        self.last = scales <= 1
        if self.last:
            self.checker = Compose(*_checkerboard_block(shape, checker + 1, hidden),
                                   event_shape=shape)
            return
        if h % 2 or w % 2:
            raise ValueError(f"MultiScaleLevel: a {h}x{w} image cannot be squeezed; use fewer "
                             "scales or pad the images.")
        self.checker = Compose(*_checkerboard_block(shape, checker, hidden), event_shape=shape)
        inner = (4 * c, h // 2, w // 2)
        self.channel = Compose(*_channel_block(inner, channel, hidden), event_shape=inner)
        self.split = Split(inner)
        self.inner = MultiScaleLevel((self.split.kept, h // 2, w // 2), scales - 1,
                                     hidden, checker, channel)

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, logdet = self.checker._inverse(x)
        if self.last:
            return y, logdet
        y, ld = self.channel._inverse(squeeze2d(y))
        y, ld_split = self.split._inverse(y)
        kept = self.split.kept
        z_kept, ld_inner = self.inner._inverse(y[:, :kept])
        y = torch.cat([z_kept, y[:, kept:]], dim=1)
        return unsqueeze2d(y), logdet + ld + ld_split + ld_inner

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if self.last:
            return self.checker._forward(z)
        y = squeeze2d(z)
        kept = self.split.kept
        x_kept, ld_inner = self.inner._forward(y[:, :kept])
        y, ld_split = self.split._forward(torch.cat([x_kept, y[:, kept:]], dim=1))
        y, ld = self.channel._forward(y)
        x, ld_checker = self.checker._forward(unsqueeze2d(y))
        return x, ld_inner + ld_split + ld + ld_checker


# ----------------------------------------------------------------------------- models


# ----------------------------------------------------------------------------- sampling


@torch.no_grad()
def sample_images(model: FlowModel, n: int, temperature: float = 1.0,
                  generator: torch.Generator | None = None) -> Tensor:
    """``n`` samples as continuous ``y`` in ``[0, 1]``, drawn at ``z ~ N(0, T^2 I)``.

    ``T < 1`` trades diversity for cleaner images (Glow's temperature).
    """
    n = check_count(n, "sample_images(n)")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    was = model.training
    model.eval()
    try:
        z = model.base.sample(n, generator=generator) * temperature  # type: ignore[operator]
        y = model.flow._forward(z)[0]
    finally:
        model.train(was)
    return y.clamp(0, 1)


@torch.no_grad()
def interpolate(model: FlowModel, a: Tensor, b: Tensor, steps: int = 8) -> Tensor:
    """Decode ``steps`` points on the great-circle path between the latents of images ``a``
    and ``b`` (integer ``[C, H, W]``; dequantised at the centre of each cell, ``u = 1/2``).

    Spherical interpolation keeps the latent norm near that of typical Gaussian samples; a
    straight line passes through the low-norm middle, which decodes to washed-out images.
    """
    v = check_pixels(torch.stack([a, b]), "a and b")
    dtype, _ = _dtype_device(model)
    was = model.training
    model.eval()
    try:
        z, _ = model.flow.inverse(((v.to(dtype) + 0.5) / LEVELS))
        za, zb = z[0].reshape(-1), z[1].reshape(-1)
        omega = torch.arccos((za @ zb / (za.norm() * zb.norm())).clamp(-1, 1))
        t = torch.linspace(0, 1, steps, dtype=dtype)[:, None]
        if float(omega) < 1e-6:
            path = (1 - t) * za + t * zb
        else:
            path = (torch.sin((1 - t) * omega) * za + torch.sin(t * omega) * zb) / torch.sin(omega)
        y = model.flow._forward(path.reshape(steps, *z.shape[1:]))[0]
    finally:
        model.train(was)
    return y.clamp(0, 1)


