"""The lecture's 2-D conditional flow matching example, reproduced as its code computes it.

The lecture (in its own time ``s``, data at ``s = 0``) uses

* the path ``x_s = (1 - s) x1 + sigma_s e`` with ``sigma_s = 0.1 (1 - s)``, ``e ~ N(0, I)``:
  at ``s = 1`` *every* point is the origin, so the path ends at a point mass, not at noise;
* the regression target ``(x1 - x_s) / (sigma_s^2 + 1e-6)``, which is not the path's velocity
  ``d x_s / ds = -x1 - 0.1 e`` (nor the Lipman form ``mu' + sigma'/sigma (x - mu)``, which
  equals it here); near ``s = 1`` it is of order ``1e6``;
* sampling that starts from ``N(0, I)`` at ``s = 0`` and integrates forward in ``s``, i.e.
  from the path's *data* end towards its point mass, the opposite of generation.

The functions below compute these quantities so the chapter can show each defect
numerically; :mod:`nfcourse.matching.paths` has the corrected paths.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

LECTURE_SIGMA = 0.1
LECTURE_EPS = 1e-6


def _col(s: Tensor | float, ref: Tensor) -> Tensor:
    if isinstance(s, Tensor):
        if s.dim() == 0:
            s = s.expand(ref.shape[0])
        if s.shape != (ref.shape[0],):
            raise ValueError(f"lecture path: s must be a float or [B] = [{ref.shape[0]}], got "
                             f"{list(s.shape)}.")
        return s.to(ref.dtype)[:, None]
    return torch.full((ref.shape[0], 1), float(s), dtype=ref.dtype)


def lecture_sigma(s: Tensor) -> Tensor:
    """``sigma_s = 0.1 (1 - s)``."""
    return LECTURE_SIGMA * (1 - s)


def lecture_path(x1: Tensor, e: Tensor, s: Tensor | float) -> Tensor:
    """The lecture's ``x_s = (1 - s) x1 + 0.1 (1 - s) e`` (``x1, e [B, D]``, lecture time s)."""
    if x1.shape != e.shape or x1.dim() != 2:
        raise ValueError(f"lecture_path: x1 and e must both be [B, D], got {list(x1.shape)} and "
                         f"{list(e.shape)}.")
    sc = _col(s, x1)
    return (1 - sc) * x1 + lecture_sigma(sc) * e


def lecture_target(x1: Tensor, xs: Tensor, s: Tensor | float) -> Tensor:
    """The lecture's regression target ``(x1 - x_s) / (sigma_s^2 + 1e-6)``."""
    sc = _col(s, x1)
    return (x1 - xs) / (lecture_sigma(sc) ** 2 + LECTURE_EPS)


def lecture_path_velocity(x1: Tensor, e: Tensor) -> Tensor:
    """What the target should have been: ``d x_s / ds = -x1 - 0.1 e`` (constant in s)."""
    return -x1 - LECTURE_SIGMA * e


def lecture_loss(field: nn.Module, x1: Tensor, e: Tensor, s: Tensor) -> Tensor:
    """The lecture's CFM loss ``mean |v(s, x_s) - target|^2`` with its path and target."""
    xs = lecture_path(x1, e, s)
    return (field(s, xs) - lecture_target(x1, xs, s)).square().sum(1).mean()
