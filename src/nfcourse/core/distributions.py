"""Base distributions for flows (the density of the latent ``z``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from nfcourse.core.flow import as_event_shape, sum_except_batch
from nfcourse.core.validation import check_count


class StandardNormal(nn.Module):
    """``N(0, I)`` over events of shape ``event_shape``.

    Holds a zero-size buffer so that ``.to(device, dtype)`` on an enclosing model moves the
    samples it draws too.
    """

    def __init__(self, event_shape: int | Sequence[int]) -> None:
        super().__init__()
        shape = as_event_shape(event_shape)
        assert shape is not None
        self.event_shape: tuple[int, ...] = shape
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    def log_prob(self, z: Tensor) -> Tensor:
        """``z: [B, *event] -> [B]``, including the ``-D/2 log(2 pi)`` constant."""
        return -0.5 * sum_except_batch(z**2) - 0.5 * self.dim * math.log(2 * math.pi)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples of shape ``[n, *event]`` on the module's device and dtype."""
        n = check_count(n, "StandardNormal.sample(n)")
        a = self._anchor
        return torch.randn((n, *self.event_shape), generator=generator,
                           device=a.device, dtype=a.dtype)

