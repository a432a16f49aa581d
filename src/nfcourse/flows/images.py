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
* **Logit transform** (chapter 1's :class:`~nfcourse.flows.simple.Logit` with ``alpha``):
  ``x = logit(alpha + (1 - 2 alpha) y)`` maps the box to the real line, where a Gaussian base
  lives; ``alpha`` keeps the values away from 0 and 1, where the logit explodes. Its log-det
  is exact and part of the density of ``y``: a ``FlowModel`` ending with
  ``Inverse(Logit(shape, alpha))`` is a density on ``[0, 1)^D``.
* **Bits per dimension** (:func:`bits_per_dim`): ``-log2 P(v) / D``, from the density on ``y``
  by adding ``log 256`` per pixel. A model that knows nothing (uniform) scores exactly 8.

The models built from these layers are :func:`nfcourse.models.tiny_realnvp` (the lecture's
dense RealNVP) and :func:`nfcourse.models.multiscale_realnvp` (:class:`MultiScaleLevel`:
checkerboard and channel couplings, squeeze and split between scales).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfcourse.core.flow import Compose, Flow, as_event_shape
from nfcourse.core.model import FlowModel
from nfcourse.core.validation import check_count, module_dtype_device
from nfcourse.data.images import LEVELS, check_pixels
from nfcourse.flows.coupling import (AffineCoupling, ChannelSplit, Checkerboard, ContextOnly,
                                     checkerboard_mask)
from nfcourse.flows.glow import ActNorm, GlowStep, Split, squeeze2d, unsqueeze2d
from nfcourse.flows.simple import Sigmoid



# ----------------------------------------------------------------------------- pixels


def _dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    dtype, device = module_dtype_device(model)
    return dtype or torch.get_default_dtype(), device or torch.device("cpu")


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

    Latent -> data, the flow is library layers: a conditional elementwise affine map
    ``h = e * exp(s(v)) + mu(v)`` (an :class:`AffineCoupling` that keeps nothing,
    :class:`ContextOnly`), ``couplings`` conditional checkerboard couplings on ``h`` (parities
    alternating), and ``u = sigmoid(h)``. Each is a bijection with an exact log-det, so
    ``log q(u | v) = log p_logistic(e) - log|det du/de|`` is exact and
    ``E_q[log p((v + u)/256) - log q(u | v)]`` is a valid lower bound on
    ``log P(v) + D log 256``. The networks start at zero, and the sigmoid of a logistic
    variable is uniform: a new variational dequantiser *is* uniform dequantisation
    (``log q = 0`` in distribution), so training can only tighten the bound. Works on images
    of any size.

    Args:
        channels: image channels; hidden: conv width of the conditioning networks;
        couplings: checkerboard couplings after the affine map; blocks: gated residual blocks
        per conditioning network (0: the plain three-convolution net); levels: grey levels
        of the images (the context is the image scaled to ``[-1/2, 1/2]``).
    """

    def __init__(self, channels: int = 1, hidden: int = 16, scale_bound: float = 3.0, *,
                 couplings: int = 1, blocks: int = 0, levels: int = LEVELS) -> None:
        super().__init__()
        if couplings < 0:
            raise ValueError(f"couplings must be >= 0, got {couplings}.")
        if levels < 2:
            raise ValueError(f"levels must be >= 2 grey levels, got {levels}.")
        self.channels, self.levels = int(channels), int(levels)
        self.spec = {"channels": int(channels), "hidden": int(hidden),
                     "scale_bound": float(scale_bound), "couplings": int(couplings),
                     "blocks": int(blocks), "levels": int(levels)}
        self.affine = AffineCoupling(ContextOnly(channels), hidden, scale_bound=scale_bound,
                                     context=channels, blocks=blocks)
        self.couplings = nn.ModuleList(
            AffineCoupling(Checkerboard(channels, parity=k % 2), hidden, scale_bound=scale_bound,
                           context=channels, blocks=blocks) for k in range(couplings))
        self.squash = Sigmoid()

    def noise(self, shape: Sequence[int], generator: torch.Generator | None = None) -> Tensor:
        """Standard logistic noise ``logit(U)``, ``U`` uniform (kept away from 0 and 1)."""
        u = torch.rand(tuple(shape), generator=generator).clamp(1e-6, 1 - 1e-6)
        return torch.log(u) - torch.log1p(-u)

    def flow_given(self, v: Tensor) -> Compose:
        """The noise -> ``u`` flow for the integer images ``v: [B, C, H, W]``."""
        cond = v.to(self._dtype()) / (self.levels - 1) - 0.5  # the image, centred, as context
        return Compose(self.affine.given(cond), *[c.given(cond) for c in self.couplings],
                       self.squash)

    def forward(self, v: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """``(u, log q(u | v))``: ``u`` in ``(0, 1)`` with the shape of ``v``, log q ``[B]``."""
        e = noise.to(device=v.device, dtype=self._dtype())
        u, logdet = self.flow_given(v)._forward(e)
        log_logistic = (F.logsigmoid(e) + F.logsigmoid(-e)).flatten(1).sum(1)
        return u, log_logistic - logdet

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


# ----------------------------------------------------------------------------- masks


def checkerboard_vector(hw: Sequence[int], parity: int) -> Tensor:
    """The checkerboard as a flat bool mask ``[H * W]``, for dense couplings on images."""
    return checkerboard_mask(hw, parity).reshape(-1).bool()


# ----------------------------------------------------------------------------- layers


class FlipChannels(Flow):
    """Reverse the channel order (a permutation, log-det 0), so that consecutive channel
    couplings (which keep the first half) alternate which half they transform."""

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z.flip(1), z.new_zeros(z.shape[0])

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.flip(1), x.new_zeros(x.shape[0])


def _checkerboard_block(shape: tuple[int, ...], n: int, hidden: int, blocks: int = 0,
                        actnorm: bool = True) -> list[Flow]:
    """``n`` checkerboard couplings with alternating parity (0 first), each with an ActNorm.

    Data -> latent (``inverse``) each coupling runs first and its ActNorm right after it;
    latent -> data (``forward``, the order of the returned list) ActNorm precedes each
    coupling.
    """
    flows: list[Flow] = []
    for k in range(n):
        flows.append(AffineCoupling(Checkerboard(shape, k % 2), hidden, blocks=blocks))
        if actnorm:
            flows.append(ActNorm(shape))
    return flows[::-1]


def _channel_block(shape: tuple[int, ...], n: int, hidden: int, blocks: int = 0,
                   actnorm: bool = True, glow: torch.Generator | None = None) -> list[Flow]:
    """``n`` channel couplings (:class:`ChannelSplit`), flipping the channels in between.

    Data -> latent (``inverse``) each coupling runs first and its ActNorm right after it,
    then the flip; latent -> data (``forward``, the order of the returned list) the reverse.
    With a generator ``glow`` they are ``n`` Glow steps instead (ActNorm, a learned 1x1
    convolution starting from a random rotation drawn from ``glow``, then the coupling), whose
    learned mixing replaces the flips; ``actnorm`` is then ignored (every step has one).
    """
    if glow is not None:
        return [GlowStep(shape, hidden, generator=glow, blocks=blocks) for _ in range(n)]
    flows: list[Flow] = []
    for k in range(n):
        flows.append(AffineCoupling(ChannelSplit(shape), hidden, blocks=blocks))
        if actnorm:
            flows.append(ActNorm(shape))
        if k < n - 1:
            flows.append(FlipChannels(shape))
    return flows[::-1]


def _per_scale(value: int | Sequence[int], n: int, name: str) -> list[int]:
    values = [int(value)] * n if isinstance(value, int) else [int(v) for v in value]
    if len(values) != n or min(values) < 0:
        raise ValueError(f"MultiScaleLevel: {name} must be one count >= 0 or {n} of them, got "
                         f"{value!r}.")
    return values


class MultiScaleLevel(Flow):
    """A RealNVP-style multi-scale flow on ``[B, C, H, W]`` (onto itself), from this scale down.

    Data -> latent (``inverse``), at each scale but the last: ``checker`` checkerboard
    couplings at the scale's resolution; squeeze to ``(4C, H/2, W/2)``; ``channel`` channel
    couplings; then glow's :class:`Split` factors out half the channels under a learned
    conditional Gaussian and the other half goes to the next scale. The last scale runs its
    checkerboard couplings and, if it has channel couplings, squeezes once more and runs them
    (no split). Latents are reassembled in the image's layout, so a plain ``N(0, I)`` base on
    the whole image is the multi-scale prior.

    Args:
        event_shape: ``(C, H, W)``.
        scales: number of scales (``scales - 1`` splits).
        hidden: conditioner width, one for all, or one per resolution met (``H``, ``H/2``, ...):
            a coupling takes the width of the resolution it runs at.
        checker, channel: couplings per scale: one count, or one per scale. A single count
            keeps RealNVP's layout: ``checker`` and ``channel`` at every scale but the last,
            which runs ``checker + 1`` checkerboard couplings and nothing else.
        blocks: gated residual blocks per conditioner (0: the plain three-convolution net).
        actnorm: an ActNorm after every coupling (data -> latent).
        glow: a generator makes the channel couplings Glow steps (ActNorm, learned 1x1
            convolution, coupling; chapter 3): the rotations they start from are drawn from it.
    """

    def __init__(self, event_shape: Sequence[int], scales: int, hidden: int | Sequence[int],
                 checker: int | Sequence[int] = 3, channel: int | Sequence[int] = 3, *,
                 blocks: int = 0, actnorm: bool = True,
                 glow: torch.Generator | None = None) -> None:
        shape = as_event_shape(event_shape)
        assert shape is not None and len(shape) == 3
        if scales < 1:
            raise ValueError(f"MultiScaleLevel: scales must be >= 1, got {scales}.")
        super().__init__(shape)
        if isinstance(checker, int) and isinstance(channel, int):
            checker, channel = [checker] * (scales - 1) + [checker + 1], [channel] * (scales - 1) + [0]
        checkers = _per_scale(checker, scales, "checker")
        channels = _per_scale(channel, scales, "channel")
        widths = [hidden] * (scales + 1) if isinstance(hidden, int) else [int(h) for h in hidden]
        need = scales + (channels[-1] > 0)
        if len(widths) < need or min(widths) < 1:
            raise ValueError(f"MultiScaleLevel: hidden must be one width or {need} (one per "
                             f"resolution), got {hidden!r}.")
        c, h, w = shape
        self.last = scales <= 1
        squeeze = not self.last or channels[0] > 0
        if not squeeze and not checkers[0]:
            raise ValueError("MultiScaleLevel: the last scale needs at least one coupling.")
        if squeeze and (h % 2 or w % 2):
            raise ValueError(f"MultiScaleLevel: a {h}x{w} image cannot be squeezed; use fewer "
                             "scales or pad the images.")
        self.checker: Compose | None = None
        if checkers[0]:
            self.checker = Compose(*_checkerboard_block(shape, checkers[0], widths[0], blocks,
                                                        actnorm), event_shape=shape)
        self.channel: Compose | None = None
        if squeeze:
            inner = (4 * c, h // 2, w // 2)
            self.channel = Compose(*_channel_block(inner, channels[0], widths[1], blocks,
                                                   actnorm, glow), event_shape=inner)
        if self.last:
            return
        self.split = Split(inner)
        self.inner = MultiScaleLevel((self.split.kept, h // 2, w // 2), scales - 1, widths[1:],
                                     checkers[1:], channels[1:], blocks=blocks, actnorm=actnorm,
                                     glow=glow)

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, logdet = (x, x.new_zeros(x.shape[0])) if self.checker is None else \
            self.checker._inverse(x)
        if self.channel is None:
            return y, logdet
        y, ld = self.channel._inverse(squeeze2d(y))
        logdet = logdet + ld
        if self.last:
            return unsqueeze2d(y), logdet
        y, ld_split = self.split._inverse(y)
        kept = self.split.kept
        z_kept, ld_inner = self.inner._inverse(y[:, :kept])
        y = torch.cat([z_kept, y[:, kept:]], dim=1)
        return unsqueeze2d(y), logdet + ld_split + ld_inner

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if self.channel is None:
            assert self.checker is not None
            return self.checker._forward(z)
        y = squeeze2d(z)
        logdet = z.new_zeros(z.shape[0])
        if not self.last:
            kept = self.split.kept
            x_kept, ld_inner = self.inner._forward(y[:, :kept])
            y, ld_split = self.split._forward(torch.cat([x_kept, y[:, kept:]], dim=1))
            logdet = ld_inner + ld_split
        y, ld = self.channel._forward(y)
        if self.checker is None:
            return unsqueeze2d(y), logdet + ld
        x, ld_checker = self.checker._forward(unsqueeze2d(y))
        return x, logdet + ld + ld_checker


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


