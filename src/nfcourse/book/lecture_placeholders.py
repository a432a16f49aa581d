"""The lecture's MNIST/inference coupling with its two placeholders, as a runnable flow.

The lecture's code (see the lecture digest's list of defects) has

* an ``mlp_forward`` that returns its input, so the "network" has no parameters and every
  coupling computes its scale and its shift as ``s(z1) = t(z1) = z1``;
* an inverse whose loop body is commented out, so the inverse returns its input unchanged.

:class:`PlaceholderCoupling` reproduces that logic (not its text) behind this book's
:class:`~nfcourse.core.flow.Flow` protocol, so chapter 9 can run the defect itself through
:func:`~nfcourse.core.testing.check_flow` instead of building its output by hand.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nfcourse.core.flow import Flow


def placeholder_mlp_forward(h: Tensor) -> Tensor:
    """The lecture's ``mlp_forward``: it returns its input (``[B, d] -> [B, d]``)."""
    return h


class PlaceholderCoupling(Flow):
    """An affine coupling on ``D = 2 d`` coordinates, computed as the lecture's code does.

    Forward (latent to data): ``x1 = z1``, ``x2 = z2 * exp(s) + t`` with
    ``s = t = mlp_forward(z1) = z1``; its log-determinant ``sum(s)`` is right for that map.
    Inverse (data to latent): the loop body that would undo the layer is absent, so it
    returns ``x`` and a zero log-determinant.
    """

    def __init__(self, features: int = 2) -> None:
        if features < 2 or features % 2:
            raise ValueError(f"PlaceholderCoupling: features must be even and >= 2, got "
                             f"{features}")
        super().__init__((features,))
        self.d = features // 2

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        z1, z2 = z[:, :self.d], z[:, self.d:]
        s = t = placeholder_mlp_forward(z1)
        return torch.cat([z1, z2 * s.exp() + t], dim=1), s.sum(dim=1)

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # for layer in reversed(layers):   <- the lecture's loop, with its body commented out
        #     ...
        return x, x.new_zeros(x.shape[0])
