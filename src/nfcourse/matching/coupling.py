"""Couplings: how a minibatch of noise ``x0 [B, D]`` is paired with a minibatch of data ``x1``.

* :func:`independent_coupling` keeps the pairs as drawn (I-CFM): ``(x0_i, x1_i)``.
* :func:`ot_coupling` re-pairs them by the exact optimal-transport assignment for squared
  Euclidean cost: OT-CFM (Tong et al. 2024; Pooladian et al. 2023). With equal batch sizes
  and uniform weights an optimal plan is a permutation (Birkhoff), so the transport problem
  is the linear assignment problem that ``scipy.optimize.linear_sum_assignment`` solves.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

COUPLINGS = ("independent", "ot")


def _check(x0: Tensor, x1: Tensor, who: str) -> None:
    if not (isinstance(x0, Tensor) and isinstance(x1, Tensor)) or x0.dim() != 2 \
            or x0.shape != x1.shape:
        raise ValueError(f"{who}: expected x0 and x1 of the same shape [B, D], got "
                         f"{getattr(x0, 'shape', None)} and {getattr(x1, 'shape', None)}; "
                         "draw as many noise points as data points.")


def independent_coupling(x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    """The pairs as drawn: ``(x0, x1)`` unchanged."""
    _check(x0, x1, "independent_coupling")
    return x0, x1


def ot_assignment(x0: Tensor, x1: Tensor) -> Tensor:
    """The permutation ``perm [B]`` minimising ``sum_i |x0_i - x1_perm[i]|^2`` (exact)."""
    _check(x0, x1, "ot_assignment")
    # Direct differences, not the |a|^2 + |b|^2 - 2ab shortcut, so near-ties are ranked exactly.
    cost = torch.cdist(x0.detach().double(), x1.detach().double(),
                       compute_mode="donot_use_mm_for_euclid_dist").square().cpu().numpy()
    _, perm = linear_sum_assignment(cost)  # the rows come back as 0..B-1, in order
    return torch.as_tensor(perm, dtype=torch.long, device=x1.device)


def ot_coupling(x0: Tensor, x1: Tensor, block: int | None = None) -> tuple[Tensor, Tensor]:
    """``(x0, x1[perm])``: the data re-ordered so each noise point meets its OT partner.

    ``block`` splits the batch into consecutive blocks of that size and solves each exactly
    (the exact solver's cost grows roughly like ``B^3``; a batch of 256 made of four OT blocks
    of 64 costs far less than one OT problem of 256, with most of the straightening).
    """
    _check(x0, x1, "ot_coupling")
    n = x0.shape[0]
    if block is None or block >= n:
        return x0, x1[ot_assignment(x0, x1)]
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"ot_coupling: block must be a positive int or None, got {block!r}.")
    parts = [x1[i:i + block][ot_assignment(x0[i:i + block], x1[i:i + block])]
             for i in range(0, n, block)]
    return x0, torch.cat(parts)


def pair(x0: Tensor, x1: Tensor, coupling: str, block: int | None = None
         ) -> tuple[Tensor, Tensor]:
    """Apply the coupling named ``coupling`` (``"independent"`` or ``"ot"`` in OT blocks of
    ``block`` rows, all rows if None)."""
    if coupling == "independent":
        return independent_coupling(x0, x1)
    if coupling == "ot":
        return ot_coupling(x0, x1, block)
    raise ValueError(f"unknown coupling {coupling!r}; choose one of {', '.join(COUPLINGS)}.")


def transport_cost(x0: Tensor, x1: Tensor) -> float:
    """Mean squared distance ``E|x1 - x0|^2`` of the given pairs (what OT minimises)."""
    _check(x0, x1, "transport_cost")
    return float((x1 - x0).square().sum(1).mean())
