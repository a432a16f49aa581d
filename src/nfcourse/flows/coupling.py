"""Coupling flows: one affine coupling, parameterised by its partition (NICE, RealNVP, Glow).

A coupling layer splits its input into a *kept* part and a *transformed* part. The kept part
passes through unchanged and is the only input (with an optional conditioning ``context``) of
a small network that produces a shift ``t`` and a log-scale ``s`` for the transformed part::

    x_kept  = z_kept
    x_trans = z_trans * exp(s(z_kept)) + t(z_kept)        (forward, latent -> data)
    z_trans = (x_trans - t(x_kept)) * exp(-s(x_kept))      (inverse, data -> latent)

Since ``x_kept`` does not depend on ``z_trans``, and each ``x_trans[i]`` depends on ``z_trans``
only through ``z_trans[i]``, the Jacobian (ordered kept-then-transformed) is block triangular
with a diagonal block ``diag(exp(s))``: ``log|det| = sum(s)``, O(D) however complex ``s`` is.
The inverse never inverts the network, it only re-evaluates it on ``x_kept``. With the scale
switched off (``s = 0``) it is NICE's additive coupling, volume preserving.

The partition says which part is which (:class:`Partition`):

* :class:`IndexSplit` - vectors ``[B, D]``: the network reads only the kept coordinates and
  writes only the transformed ones (gathered by index; no mask multiplications).
* :class:`Checkerboard` - images ``[B, C, H, W]``: the pixels of one colour of a checkerboard
  are kept; a convolution needs the spatial layout, so it sees the image with the other
  colour zeroed (plus the mask as a channel) and its output is zeroed on the kept pixels.
* :class:`ChannelSplit` - images: the first ``C // 2`` channels are kept (Glow).
* :class:`ContextOnly` - nothing is kept: ``s`` and ``t`` depend on the context alone (a
  conditional elementwise affine map, as in variational dequantisation).

One layer leaves the kept coordinates alone, so layers must alternate which coordinates they
keep; :func:`coupling_masks` builds those partitions as boolean masks (an ``AffineCoupling``
given a mask uses the index split), and with ``kind="lecture"`` it reproduces the lecture's
split, which keeps the first ``D // 2`` coordinates in every layer (for even ``D`` it is the
same split every time).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from nfcourse.core.flow import Flow, as_event_shape, sum_except_batch
from nfcourse.nn import image_net, mlp


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


def checkerboard_mask(hw: Sequence[int], parity: int, device: torch.device | None = None,
                      dtype: torch.dtype | None = None) -> Tensor:
    """``[1, 1, H, W]`` with 1 where ``(i + j) % 2 == parity`` (the kept pixels)."""
    h, w = int(hw[0]), int(hw[1])
    ij = torch.arange(h, device=device)[:, None] + torch.arange(w, device=device)[None, :]
    return ((ij % 2) == parity).to(dtype or torch.get_default_dtype()).reshape(1, 1, h, w)


def soft_clamp(s: Tensor, bound: float) -> Tensor:
    """``bound * tanh(s / bound)``: the identity near 0, smoothly limited to ``(-bound, bound)``.

    It keeps ``exp(s)`` within ``[e^-bound, e^bound]`` so one bad step cannot overflow, while
    the slope 1 at 0 leaves small log-scales untouched.
    """
    return bound * torch.tanh(s / bound)


# ----------------------------------------------------------------------------- partitions


class Partition(nn.Module):
    """Which part of ``v: [B, *event_shape]`` a coupling keeps and which it transforms.

    A partition gives the conditioner's input (a function of the kept part only), the
    transformed part, and how to put a new transformed part back; it also builds the
    conditioner network that fits its sizes. Its buffers are not saved in a ``state_dict``:
    they are rebuilt from the constructor's arguments.
    """

    keeps_nothing = False

    def __init__(self, event_shape: tuple[int, ...] | None) -> None:
        super().__init__()
        self.event_shape = event_shape      # None: images of any height and width

    def conditioner(self, params: int, hidden: int | None, depth: int,
                    activation: type[nn.Module], context: int, blocks: int = 0) -> nn.Module:
        """The network ``kept (+ context) -> params`` values per transformed entry (``blocks``:
        gated residual blocks of an image conditioner, 0 for the plain one)."""
        raise NotImplementedError

    def kept(self, v: Tensor) -> Tensor:
        """What the conditioner sees of ``v``: it depends on the kept part only."""
        raise NotImplementedError

    def free(self, v: Tensor) -> Tensor:
        """The transformed part of ``v``, shaped like one slice of the conditioner's output."""
        raise NotImplementedError

    def merge(self, v: Tensor, new_free: Tensor) -> Tensor:
        """``v`` with its transformed part replaced by ``new_free`` (the kept part unchanged)."""
        raise NotImplementedError

    def restrict(self, p: Tensor) -> Tensor:
        """Network output -> a parameter of the transformed part (zero where nothing moves)."""
        return p


class IndexSplit(Partition):
    """Vectors ``[B, D]`` split by a boolean mask ``[D]`` (``True`` = kept).

    The fast formulation: the network reads the kept coordinates (``index_select``) and
    produces ``s`` and ``t`` for the transformed ones only, written back with ``index_copy``.
    It is the same map as multiplying by the mask and zeroing half of a ``D``-wide output,
    with first and last layers half as wide and no products with zero.
    """

    def __init__(self, mask: Tensor) -> None:
        mask = torch.as_tensor(mask)
        if mask.dim() != 1 or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a 1-D bool tensor, got dtype {mask.dtype} and shape "
                             f"{list(mask.shape)}; build one with coupling_masks().")
        if bool(mask.all()) or not bool(mask.any()):
            raise ValueError("mask must keep at least one coordinate and transform at least one;"
                             f" got {mask.int().tolist()}.")
        super().__init__((mask.numel(),))
        self.register_buffer("mask", mask.clone(), persistent=False)
        self.register_buffer("kept_idx", torch.nonzero(mask).flatten(), persistent=False)
        self.register_buffer("free_idx", torch.nonzero(~mask).flatten(), persistent=False)
        # "halves" masks keep one block and transform the other: then plain slices and one
        # concatenation replace the gather and the scatter (fewer, cheaper kernels)
        self.blocks: tuple[slice, slice] | None = None
        kept, free = self.kept_idx.tolist(), self.free_idx.tolist()
        if kept == list(range(kept[0], kept[-1] + 1)) and free == list(range(free[0],
                                                                             free[-1] + 1)):
            self.blocks = slice(kept[0], kept[-1] + 1), slice(free[0], free[-1] + 1)

    def conditioner(self, params: int, hidden: int | None, depth: int,
                    activation: type[nn.Module], context: int, blocks: int = 0) -> nn.Module:
        if blocks:
            raise ValueError("gated residual blocks are image conditioners; a vector coupling "
                             "takes depth= instead of blocks=.")
        if hidden is None:
            raise ValueError("a vector coupling needs a hidden width; hidden=None (a single "
                             "convolution) is only for images.")
        return mlp(self.kept_idx.numel() + context, params * self.free_idx.numel(), hidden,
                   depth, activation)

    def kept(self, v: Tensor) -> Tensor:
        if self.blocks is not None:
            return v[:, self.blocks[0]]
        return v.index_select(1, self.kept_idx)

    def free(self, v: Tensor) -> Tensor:
        if self.blocks is not None:
            return v[:, self.blocks[1]]
        return v.index_select(1, self.free_idx)

    def merge(self, v: Tensor, new_free: Tensor) -> Tensor:
        if self.blocks is not None:
            kept, free = self.blocks
            parts = (v[:, kept], new_free) if kept.start < free.start else (new_free, v[:, kept])
            return torch.cat(parts, dim=1)
        return v.index_copy(1, self.free_idx, new_free)


def _image_shape(event_shape: int | Sequence[int], who: str) -> tuple[tuple[int, ...] | None, int]:
    """``(event_shape or None, channels)`` from ``(C, H, W)`` or a channel count ``C`` (which
    means images of any height and width)."""
    if isinstance(event_shape, int):
        if event_shape < 1:
            raise ValueError(f"{who}: channels must be >= 1, got {event_shape}.")
        return None, event_shape
    shape = as_event_shape(event_shape)
    if shape is None or len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{who} needs an image event_shape (C, H, W) or a channel count, got "
                         f"{event_shape!r}.")
    return shape, shape[0]


class Checkerboard(Partition):
    """Images ``[B, C, H, W]``: pixels with ``(i + j) % 2 == parity`` are kept (RealNVP).

    The conditioner is a convolution, which needs the spatial layout, so it sees the image
    with the transformed pixels zeroed plus the mask as an extra channel (so it knows which
    positions are real), and its output is zeroed on the kept pixels. Given a channel count
    instead of ``(C, H, W)``, it works on images of any size (the mask is built per call).
    """

    def __init__(self, event_shape: int | Sequence[int], parity: int) -> None:
        shape, self.channels = _image_shape(event_shape, "Checkerboard")
        if parity not in (0, 1) or (shape is not None and shape[1] * shape[2] < 2):
            raise ValueError(f"Checkerboard: parity must be 0 or 1 and the image must have at "
                             f"least 2 pixels; got parity {parity}, shape {shape}.")
        super().__init__(shape)
        self.parity = parity
        # a buffer so it moves with .to(); None (built per call) when the size is not fixed
        self.register_buffer("mask", None if shape is None else
                             checkerboard_mask(shape[1:], parity), persistent=False)

    def _mask(self, v: Tensor) -> Tensor:
        """``[1, 1, H, W]``, 1 on the kept pixels of ``v``."""
        if self.mask is not None:
            return self.mask
        return checkerboard_mask(v.shape[-2:], self.parity, v.device, v.dtype)

    def conditioner(self, params: int, hidden: int | None, depth: int,
                    activation: type[nn.Module], context: int, blocks: int = 0) -> nn.Module:
        return image_net(self.channels + 1 + context, params * self.channels, hidden, blocks)

    def kept(self, v: Tensor) -> Tensor:
        mask = self._mask(v)
        return torch.cat([v * mask, mask.expand(v.shape[0], 1, -1, -1)], dim=1)

    def free(self, v: Tensor) -> Tensor:
        return v

    def merge(self, v: Tensor, new_free: Tensor) -> Tensor:
        return new_free

    def restrict(self, p: Tensor) -> Tensor:
        # zero on the kept pixels: there s = t = 0, so the affine map leaves them exactly alone
        return p * (1 - self._mask(p))


class ChannelSplit(Partition):
    """Images ``[B, C, H, W]``: the first ``C // 2`` channels are kept (Glow, multi-scale).

    Always keeping the *first* half is fine where a learned 1x1 convolution (Glow) or a
    channel flip (multi-scale RealNVP) decides between couplings what lands in each half.
    """

    def __init__(self, event_shape: int | Sequence[int]) -> None:
        shape, channels = _image_shape(event_shape, "ChannelSplit")
        if channels < 2:
            raise ValueError(f"ChannelSplit needs images with at least 2 channels, got "
                             f"{event_shape!r}. Squeeze the image first.")
        super().__init__(shape)
        self.channels, self.kept_channels = channels, channels // 2

    def conditioner(self, params: int, hidden: int | None, depth: int,
                    activation: type[nn.Module], context: int, blocks: int = 0) -> nn.Module:
        k = self.kept_channels
        return image_net(k + context, params * (self.channels - k), hidden, blocks)

    def kept(self, v: Tensor) -> Tensor:
        return v[:, :self.kept_channels]

    def free(self, v: Tensor) -> Tensor:
        return v[:, self.kept_channels:]

    def merge(self, v: Tensor, new_free: Tensor) -> Tensor:
        return torch.cat([v[:, :self.kept_channels], new_free], dim=1)


class ContextOnly(Partition):
    """Images: nothing is kept, every pixel is transformed with ``s, t`` from the context.

    A coupling with this partition is a conditional elementwise affine map
    ``x = z * exp(s(c)) + t(c)`` (a conv net of the context); it needs a context (without
    one it would be a constant map, :class:`~nfcourse.flows.simple.ElementwiseAffine`).
    """

    keeps_nothing = True

    def __init__(self, event_shape: int | Sequence[int]) -> None:
        shape, self.channels = _image_shape(event_shape, "ContextOnly")
        super().__init__(shape)

    def conditioner(self, params: int, hidden: int | None, depth: int,
                    activation: type[nn.Module], context: int, blocks: int = 0) -> nn.Module:
        return image_net(context, params * self.channels, hidden, blocks)

    def kept(self, v: Tensor) -> Tensor:
        return v[:, :0]

    def free(self, v: Tensor) -> Tensor:
        return v

    def merge(self, v: Tensor, new_free: Tensor) -> Tensor:
        return new_free


# ----------------------------------------------------------------------------- the coupling


class AffineCoupling(Flow):
    """The affine coupling ``x_trans = z_trans * exp(s) + t``, ``(s, t) = net(z_kept[, c])``.

    ``log|det dx/dz| = sum(s)`` over the transformed entries; the inverse returns ``-sum(s)``.
    The raw log-scale passes through :func:`soft_clamp` with ``scale_bound``. The network's
    last layer starts at zero, so a new coupling is the identity map.

    Args:
        partition: a :class:`Partition`, or a bool mask ``[D]`` (``True`` = kept, see
            :func:`coupling_masks`), which means :class:`IndexSplit`.
        hidden: width of the conditioner (units for vectors, channels for images; ``None``
            for images: one zero-initialised 3x3 convolution, Glow's split prior).
        depth: hidden layers of a vector conditioner (image conditioners are
            :func:`nfcourse.nn.conv_net`, three convolutions, unless ``blocks`` is set).
        scale_bound: bound on ``|s|`` per layer and entry.
        context: features (vectors) or channels (images) of a conditioning input ``c``; a
            conditional coupling is called through :meth:`given`.
        scale: ``False`` fixes ``s = 0``: NICE's additive coupling (``log|det| = 0``).
        blocks: images only: a :func:`nfcourse.nn.gated_resnet` conditioner with this many
            gated residual blocks instead of the plain three convolutions.
    """

    def __init__(self, partition: Partition | Tensor, hidden: int | None = 64, depth: int = 2,
                 scale_bound: float = 3.0, activation: type[nn.Module] = nn.ReLU, *,
                 context: int = 0, scale: bool = True, blocks: int = 0) -> None:
        if not isinstance(partition, Partition):
            partition = IndexSplit(partition)
        if not scale_bound > 0:
            raise ValueError(f"scale_bound must be > 0, got {scale_bound}.")
        if context < 0 or (partition.keeps_nothing and context == 0):
            raise ValueError(f"context must be >= 0, and > 0 for a partition that keeps "
                             f"nothing ({type(partition).__name__}); got {context}.")
        super().__init__(partition.event_shape)
        self.partition = partition
        self.scale, self.context_features = bool(scale), int(context)
        self.scale_bound = float(scale_bound)
        self.net = partition.conditioner(2 if scale else 1, hidden, depth, activation, context,
                                         blocks)

    def given(self, context: Tensor) -> Conditioned:
        """This coupling with its context fixed: a plain flow of ``z`` (``context: [B, ...]``)."""
        return Conditioned(self, context)

    def _scale_shift(self, v: Tensor, context: Tensor | None) -> tuple[Tensor | None, Tensor]:
        """``(s, t)`` for the transformed part of ``v`` (``s`` is ``None`` when additive)."""
        inp = self.partition.kept(v)
        if self.context_features:
            if context is None or context.shape[0] not in (1, v.shape[0]):
                got = None if context is None else list(context.shape)
                raise ValueError(f"{type(self).__name__} is conditional (context="
                                 f"{self.context_features}): call coupling.given(context)(z) "
                                 f"with a context of batch size {v.shape[0]} (or 1, shared by "
                                 f"all points); got {got}.")
            context = context.to(v.dtype).expand(v.shape[0], *context.shape[1:])
            inp = torch.cat([inp, context], dim=1)
        out = self.net(inp)
        if not self.scale:
            return None, self.partition.restrict(out)
        raw_s, t = out.chunk(2, dim=1)
        restrict = self.partition.restrict
        return soft_clamp(restrict(raw_s), self.scale_bound), restrict(t)

    def _forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        s, t = self._scale_shift(z, context)
        free = self.partition.free(z)
        if s is None:
            return self.partition.merge(z, free + t), z.new_zeros(z.shape[0])
        return self.partition.merge(z, free * torch.exp(s) + t), sum_except_batch(s)

    def _inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        s, t = self._scale_shift(x, context)
        free = self.partition.free(x)
        if s is None:
            return self.partition.merge(x, free - t), x.new_zeros(x.shape[0])
        return self.partition.merge(x, (free - t) * torch.exp(-s)), -sum_except_batch(s)


class AdditiveCoupling(AffineCoupling):
    """NICE's additive coupling, ``x_trans = z_trans + t(z_kept)``: :class:`AffineCoupling`
    with the scale switched off, so ``log|det| = 0``.

    Volume preserving on its own; pair it with :class:`DiagonalScaling` (as
    :func:`nfcourse.models.nice` does) so the model can change volume at all.
    """

    def __init__(self, partition: Partition | Tensor, hidden: int | None = 64, depth: int = 2,
                 activation: type[nn.Module] = nn.ReLU, *, context: int = 0) -> None:
        super().__init__(partition, hidden, depth, activation=activation, context=context,
                         scale=False)


class Conditioned(Flow):
    """A conditional coupling with its context bound: ``forward(z)`` is ``f(z | context)``.

    The context ``[B, ...]`` must have the batch size of the points it is used with (or 1,
    one context shared by every point); it is a
    (non-saved) buffer, so ``.to()`` and ``.double()`` move it with the flow.
    """

    def __init__(self, flow: AffineCoupling, context: Tensor) -> None:
        super().__init__(flow.event_shape)
        self.flow = flow
        self.register_buffer("context", context, persistent=False)

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.flow._forward(z, self.context)

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.flow._inverse(x, self.context)


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
