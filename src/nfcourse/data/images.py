"""8-bit images as data: pixel levels, uniform dequantisation, bits per dimension.

``y = (v + u) / 256`` spreads each integer level ``v`` over its cell; bits/dim is
``-log2 P(v) / D``, from the NLL of ``y`` by adding ``log 256`` per pixel (a model that knows
nothing scores exactly 8). The learned (variational) dequantiser is a flow:
:class:`nfcourse.flows.images.VariationalDequantizer`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

LEVELS = 256
MNIST_SHAPE = (1, 28, 28)


def check_pixels(v: Tensor, name: str = "images", levels: int = LEVELS) -> Tensor:
    """Require integer pixel levels ``0..levels-1`` in a batch ``[B, C, H, W]``."""
    if not isinstance(v, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of integer pixels, got "
                        f"{type(v).__name__}.")
    if v.is_floating_point():
        raise TypeError(f"{name}: expected integer pixel levels 0..{levels - 1} (e.g. uint8 from "
                        f"load_mnist), got {v.dtype}. Dequantise raw pixels only once.")
    if v.dim() != 4:
        raise ValueError(f"{name}: expected images [B, C, H, W], got shape {list(v.shape)}.")
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= levels):
        raise ValueError(f"{name}: pixel levels must lie in 0..{levels - 1}, got "
                         f"[{int(v.min())}, {int(v.max())}].")
    return v


def to_pixels(y: Tensor, levels: int = LEVELS) -> Tensor:
    """Continuous ``y`` in ``[0, 1]`` -> the integer level of its cell (uint8 for 256 levels)."""
    return torch.floor(y * levels).clamp(0, levels - 1).to(torch.uint8)


def bits_per_dim(nll_y: Tensor | float, dims: int, levels: int = LEVELS) -> Tensor | float:
    """Bits per pixel of the discrete image from the NLL (nats) of ``y = (v + u) / levels``.

    ``(nll_y / dims + log(levels)) / log(2)``. ``nll_y`` must be the negative log-density on
    ``[0, 1)^D`` with every transform counted (the logit's log-det included, which a
    :class:`FlowModel` ending in ``Inverse(Logit(shape, alpha))`` does) and, for variational
    dequantisation, ``+ log q(u | v)``. A uniform density on the box has ``nll_y = 0``: 8 bits.
    """
    if dims < 1 or levels < 2:
        raise ValueError(f"bits_per_dim needs dims >= 1 and levels >= 2, got {dims}, {levels}.")
    return (nll_y / dims + math.log(levels)) / math.log(2)


def uniform_dequantize(v: Tensor, levels: int = LEVELS,
                       generator: torch.Generator | None = None) -> Tensor:
    """Integer levels ``v: [B, C, H, W]`` (``0..levels-1``) -> ``y = (v + u) / levels`` in
    ``[0, 1)``, ``u ~ Uniform[0, 1)`` fresh on every call (pass a ``generator`` to reproduce
    it); the default float dtype. ``log q(u | v) = 0``, so nothing else is returned.
    """
    check_pixels(v, "dequantize", levels)
    u = torch.rand(v.shape, generator=generator)
    return (v.to(u.dtype) + u) / levels


class UniformDequantizer(nn.Module):
    """``u ~ Uniform[0, 1)^D``: ``log q(u | v) = 0``. The noise *is* ``u``."""

    def noise(self, shape: Sequence[int], generator: torch.Generator | None = None) -> Tensor:
        return torch.rand(tuple(shape), generator=generator)

    def forward(self, v: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """``(u, log q(u | v))`` for images ``v`` and noise from :meth:`noise`."""
        return noise.to(v.device), noise.new_zeros(v.shape[0]).to(v.device)


def dequantize(v: Tensor, dequantizer: nn.Module | None = None,
               generator: torch.Generator | None = None,
               noise: Tensor | None = None, *, levels: int = LEVELS) -> tuple[Tensor, Tensor]:
    """Integer images ``v`` -> ``(y = (v + u) / levels, log q(u | v))``, both per image.

    ``dequantizer`` defaults to uniform noise; ``noise`` (from ``dequantizer.noise``) may be
    passed to reuse exactly the same draw (the trainer does, to shard a global batch).
    ``levels``: grey levels of the images (256 for 8 bits, 17 for scikit-learn's digits).
    """
    check_pixels(v, "dequantize", levels)
    dequantizer = dequantizer if dequantizer is not None else UniformDequantizer()
    if noise is None:
        noise = dequantizer.noise(v.shape, generator)  # type: ignore[operator]
    u, log_q = dequantizer(v, noise)
    return (v.to(u.dtype) + u) / levels, log_q


def independent_pixel_bits(train: Tensor, test: Tensor, prior: float = 1.0) -> float:
    """Bits/dim on ``test`` of the best model that treats pixels as independent.

    Each pixel gets its own histogram over the 256 levels, fitted on ``train`` with
    ``prior`` pseudo-counts per level (so unseen levels keep a finite cost). A flow that
    learns nothing about how pixels depend on each other cannot beat this on held-out data.
    """
    check_pixels(train, "train")
    check_pixels(test, "test")
    d = train[0].numel()
    flat_train, flat_test = train.reshape(len(train), d).long(), test.reshape(len(test), d).long()
    counts = torch.full((d, LEVELS), float(prior), dtype=torch.float64)
    counts.scatter_add_(1, flat_train.T, torch.ones_like(flat_train.T, dtype=torch.float64))
    log_p = (counts / counts.sum(dim=1, keepdim=True)).log()
    nll = -log_p.gather(1, flat_test.T).sum(dim=0)             # nats per test image
    return float(nll.mean() / d / math.log(2))
