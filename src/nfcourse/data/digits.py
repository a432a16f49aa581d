"""scikit-learn's 8x8 handwritten digits as a small image data set for flows (no download).

The images (1,797 of them, ``load_digits``) have 64 pixels with **17 grey levels**, the
integers 0..16 (each is a count of "on" pixels in a 4x4 block of a 32x32 bitmap). A flow is
a density on continuous values, so the integers are *dequantised*: pixel value ``v`` becomes

    y = (v + u) / 17,   u ~ Uniform[0, 1)     (so y in [0, 1), one cell of width 1/17 per level)

and the model sees ``x = y - 1/2`` (centred; a shift, log-det 0). For a continuous density
``q`` on ``y``, Jensen's inequality gives a bound on the probability the model assigns to the
*discrete* image ``v``:

    log Q(v) = log int_cell q(y) dy >= E_u[log q(y)] - 64 * log(17),

so ``bits/dim = (NLL_y / 64 + log 17) / log 2`` (``NLL_y`` in nats per image, averaged over
images and noise) is an upper bound on the discrete model's code length. It is measured
against 17 levels, not 256: a model that knows nothing (uniform over the 17 levels) scores
``log2(17) = 4.09`` bits/dim, and 0 is the floor. The number is *not* comparable with MNIST or
CIFAR bits/dim, which count 256 levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nfcourse.data.images import bits_per_dim, to_pixels, uniform_dequantize
from nfcourse.metrics.stats import mean_se

LEVELS = 17          # grey levels 0..16 in load_digits
SHAPE = (1, 8, 8)    # one channel, 8x8
DIMS = 64


def load_digit_levels() -> tuple[Tensor, Tensor]:
    """All 1,797 images as integer levels ``[N, 1, 8, 8]`` (uint8, 0..16) and labels ``[N]``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.uint8).reshape(-1, *SHAPE)
    if int(images.max()) >= LEVELS:  # guards the 17-level assumption everything here rests on
        raise RuntimeError(f"load_digits returned a pixel value {int(images.max())}; this "
                           f"module assumes levels 0..{LEVELS - 1}.")
    return images, torch.as_tensor(bunch.target)


@dataclass(frozen=True)
class DigitsSplit:
    """Integer images split into disjoint training and held-out sets (``[N, 1, 8, 8]`` uint8)."""

    train: Tensor
    held_out: Tensor
    train_labels: Tensor
    held_out_labels: Tensor


def digits_split(held_out: float = 0.2, seed: int = 0) -> DigitsSplit:
    """A random split of the 1,797 digits, the same for the same ``seed``.

    ``held_out`` is the fraction kept aside for evaluation (never trained on).
    """
    if not 0 < held_out < 1:
        raise ValueError(f"held_out must be a fraction in (0, 1), got {held_out}.")
    images, labels = load_digit_levels()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n_out = int(round(held_out * len(images)))
    test, train = order[:n_out], order[n_out:]
    return DigitsSplit(images[train], images[test], labels[train], labels[test])


def dequantize(levels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Integer levels ``[N, 1, 8, 8]`` (0..16) -> continuous ``x = (v + u)/17 - 1/2``.

    Fresh uniform noise ``u`` on every call (pass a ``generator`` to reproduce it); the
    images' :func:`~nfcourse.data.images.uniform_dequantize` with 17 levels, then centred.
    """
    return uniform_dequantize(levels, LEVELS, generator) - 0.5


def to_levels(x: Tensor) -> Tensor:
    """Continuous model output ``x`` -> nearest integer levels 0..16 (inverse of dequantize)."""
    return to_pixels(x + 0.5, LEVELS)


class DequantizedSampler:
    """A training stream for :func:`nfcourse.training.engine.fit`: random images, fresh noise each time.

    ``sampler(n, generator) -> [n, 1, 8, 8]``: ``n`` rows drawn with replacement from
    ``levels``, each dequantised with new noise, so the model never sees the same continuous
    point twice (the noise is part of the data augmentation that makes the bound valid).
    """

    def __init__(self, levels: Tensor) -> None:
        if levels.dim() != 4 or levels.is_floating_point():
            raise ValueError("DequantizedSampler expects integer images [N, C, H, W], got "
                             f"{levels.dtype} {list(levels.shape)}.")
        self.levels = levels

    def __call__(self, n: int, generator: torch.Generator) -> Tensor:
        idx = torch.randint(0, len(self.levels), (n,), generator=generator)
        return dequantize(self.levels[idx], generator)


def held_out_bits_per_dim(log_prob, levels: Tensor, draws: int = 4, seed: int = 0,
                          batch: int = 512) -> tuple[float, float]:
    """Held-out bits/dim of a model ``log_prob: [B, 1, 8, 8] -> [B]`` (nats), with its s.e.

    Each image is dequantised ``draws`` times with fixed noise (``seed``); the per-image bits
    are averaged over the draws, and the standard error is over images.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}.")
    g = torch.Generator().manual_seed(seed)
    dims = math.prod(levels.shape[1:])
    per_image = torch.zeros(len(levels), dtype=torch.float64)
    with torch.no_grad():
        for _ in range(draws):
            x = dequantize(levels, g)
            lp = torch.cat([log_prob(part).double() for part in x.split(batch)])
            per_image += -lp / draws
    bits = bits_per_dim(per_image, dims, LEVELS)
    return mean_se(bits)
