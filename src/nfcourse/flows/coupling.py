"""Coupling flows: NICE's additive coupling and RealNVP's affine coupling.

A coupling layer splits the coordinates with a binary mask into a *kept* part (mask 1) and a
*transformed* part (mask 0). The kept part passes through unchanged and is the only input of a
small network that produces a shift ``t`` (and, for affine coupling, a log-scale ``s``) for the
transformed part::

    x_kept  = z_kept
    x_trans = z_trans * exp(s(z_kept)) + t(z_kept)        (forward, latent -> data)
    z_trans = (x_trans - t(x_kept)) * exp(-s(x_kept))      (inverse, data -> latent)

Since ``x_kept`` does not depend on ``z_trans``, and each ``x_trans[i]`` depends on ``z_trans``
only through ``z_trans[i]``, the Jacobian (ordered kept-then-transformed) is block triangular
with a diagonal block ``diag(exp(s))``: ``log|det| = sum(s)``, O(D) however complex ``s`` is.
The inverse never inverts the network, it only re-evaluates it on ``x_kept``.

One layer leaves the kept coordinates alone, so layers must alternate which coordinates they
keep; :func:`coupling_masks` builds those masks, and with ``kind="lecture"`` it reproduces the
lecture's split, which keeps the first ``D // 2`` coordinates in every layer (for even ``D`` it
is the same split every time).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from nfcourse.core.flow import Flow, sum_except_batch
from nfcourse.nn import mlp


MASK_KINDS = ("halves", "parity", "lecture")


def coupling_masks(features: int, layers: int, kind: str = "halves") -> list[Tensor]:
    """One boolean mask ``[features]`` per layer; ``True`` marks a kept coordinate.

    Kinds:
        ``"halves"``: keep the first half on even layers and the second half on odd layers
            (for odd ``features`` the halves are ``D//2`` and ``D - D//2``).
        ``"parity"``: keep even-indexed coordinates on even layers, odd-indexed on odd layers.
        ``"lecture"``: the lecture's split, reproduced on purpose: it keeps the first ``d``
            coordinates with ``d = D // 2`` on even layers and ``d = D - D // 2`` on odd ones.
            For even ``D`` every layer is the same split; for any ``D`` the first ``D // 2``
            coordinates are kept by every layer, so they are never transformed. Use it only
            to show that defect.
    Every layer of every kind keeps at least one and transforms at least one coordinate.
    """
    if features < 2:
        raise ValueError(f"coupling needs at least 2 features to split, got {features}.")
    if layers < 1:
        raise ValueError(f"number of coupling layers must be >= 1, got {layers}.")
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; choose one of {', '.join(MASK_KINDS)}.")
    idx = torch.arange(features)
    masks = []
    for k in range(layers):
        if kind == "halves":
            first = idx < features // 2
            masks.append(first if k % 2 == 0 else ~first)
        elif kind == "parity":
            masks.append(idx % 2 == k % 2)
        else:
            d = features // 2 if k % 2 == 0 else features - features // 2
            masks.append(idx < d)
    return masks


def never_transformed(masks: Sequence[Tensor]) -> list[int]:
    """Coordinates that every mask keeps, i.e. that no layer ever changes (should be empty)."""
    kept = torch.stack(list(masks)).all(dim=0)
    return [int(i) for i in torch.nonzero(kept).flatten()]


def soft_clamp(s: Tensor, bound: float) -> Tensor:
    """``bound * tanh(s / bound)``: the identity near 0, smoothly limited to ``(-bound, bound)``.

    It keeps ``exp(s)`` within ``[e^-bound, e^bound]`` so one bad step cannot overflow, while
    the slope 1 at 0 leaves small log-scales untouched.
    """
    return bound * torch.tanh(s / bound)


class _Coupling(Flow):
    """Shared plumbing: the mask buffer and the conditioner network."""

    def __init__(self, mask: Tensor, hidden: int, depth: int, outputs_per_feature: int,
                 activation: type[nn.Module]) -> None:
        mask = torch.as_tensor(mask)
        if mask.dim() != 1 or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a 1-D bool tensor, got dtype {mask.dtype} and shape "
                             f"{list(mask.shape)}; build one with coupling_masks().")
        if bool(mask.all()) or not bool(mask.any()):
            raise ValueError("mask must keep at least one coordinate and transform at least one;"
                             f" got {mask.int().tolist()}.")
        features = mask.numel()
        super().__init__((features,))
        # Stored as float so masking is a multiplication; a buffer so it moves with .to().
        self.register_buffer("mask", mask.to(torch.get_default_dtype()))
        self.net = mlp(features, outputs_per_feature * features, hidden, depth, activation)

    def _conditioner(self, kept: Tensor) -> Tensor:
        # The network sees the whole vector with the transformed part zeroed, so its output can
        # only depend on the kept coordinates: that is what makes the Jacobian triangular.
        return self.net(kept * self.mask)


class AdditiveCoupling(_Coupling):
    """NICE's additive coupling: ``x_trans = z_trans + t(z_kept)``; ``log|det| = 0``.

    Volume preserving on its own; pair it with :class:`DiagonalScaling` (as :func:`nice` does)
    so the model can change volume at all.

    Args:
        mask: bool ``[features]``, ``True`` = kept (see :func:`coupling_masks`).
        hidden, depth: width and number of hidden layers of the shift network.
    """

    def __init__(self, mask: Tensor, hidden: int = 64, depth: int = 2,
                 activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__(mask, hidden, depth, 1, activation)

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        t = self._conditioner(z) * (1 - self.mask)
        return z + t, z.new_zeros(z.shape[0])

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        t = self._conditioner(x) * (1 - self.mask)
        return x - t, x.new_zeros(x.shape[0])


class AffineCoupling(_Coupling):
    """RealNVP's affine coupling: ``x_trans = z_trans * exp(s(z_kept)) + t(z_kept)``.

    ``log|det dx/dz| = sum(s)`` over the transformed coordinates; the inverse returns ``-sum(s)``.
    The raw log-scale passes through :func:`soft_clamp` with ``scale_bound``.

    Args:
        mask: bool ``[features]``, ``True`` = kept (see :func:`coupling_masks`).
        hidden, depth: width and number of hidden layers of the ``(s, t)`` network.
        scale_bound: bound on ``|s|`` per layer and coordinate.
    """

    def __init__(self, mask: Tensor, hidden: int = 64, depth: int = 2, scale_bound: float = 3.0,
                 activation: type[nn.Module] = nn.ReLU) -> None:
        if not scale_bound > 0:
            raise ValueError(f"scale_bound must be > 0, got {scale_bound}.")
        super().__init__(mask, hidden, depth, 2, activation)
        self.scale_bound = float(scale_bound)

    def _scale_shift(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        """``(s, t)``, each ``[B, features]`` and zero on the kept coordinates."""
        raw_s, t = self._conditioner(kept).chunk(2, dim=1)
        free = 1 - self.mask
        return soft_clamp(raw_s, self.scale_bound) * free, t * free

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._scale_shift(z)
        # On kept coordinates s = t = 0, so this line leaves them exactly unchanged.
        return z * torch.exp(s) + t, sum_except_batch(s)

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._scale_shift(x)
        return (x - t) * torch.exp(-s), -sum_except_batch(s)


class DiagonalScaling(Flow):
    """NICE's scaling layer: ``x = z * exp(log_scale)``, one learned scale per coordinate.

    The only layer of a NICE model that changes volume: ``log|det| = sum(log_scale)``.
    Starts as the identity.
    """

    def __init__(self, features: int) -> None:
        super().__init__((features,))
        self.log_scale = nn.Parameter(torch.zeros(features))

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z * self.log_scale.exp(), self.log_scale.sum().expand(z.shape[0])

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * (-self.log_scale).exp(), (-self.log_scale.sum()).expand(x.shape[0])


