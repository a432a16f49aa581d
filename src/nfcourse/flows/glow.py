"""Glow (Kingma & Dhariwal 2018): ActNorm, invertible 1x1 convolutions, multi-scale models.

Direction convention as everywhere in nfcourse: ``forward(z) -> (x, logdet)`` is latent to
data, ``inverse(x) -> (z, logdet)`` is data to latent. Every layer here works on vectors
``[B, D]`` and on images ``[B, C, H, W]``; the "channel" axis is always dimension 1, and a
per-channel operation is applied at every pixel, so its log-det is ``H * W`` times the
log-det of its ``C x C`` action (``H * W = 1`` for vectors).

* :class:`ActNorm` - per-channel affine map, initialised from the first data batch so that the
  latent side starts with zero mean and unit variance per channel. The "initialised" flag is
  a registered buffer, so it travels through ``state_dict``/``load_state_dict``.
* :class:`InvertibleLinear` (vectors) and :class:`InvertibleConv1x1` (images) - a learned
  ``C x C`` matrix ``W`` mixing channels (data -> latent: ``z = W x``), stored either densely (log-det by ``slogdet``, O(C^3))
  or as ``W = P L U`` (log-det = ``sum(log|diag U|)``, O(C)).
* :func:`squeeze2d` / :func:`unsqueeze2d` - space-to-channel reshapes, exact inverses.
* :class:`Split` - factor out half the channels with a Gaussian prior whose mean and scale are
  predicted from the other half. Written as a flow: the factored half is an affine function
  of standard-normal noise, so ``N(0, I)`` on the noise *is* the learned conditional prior.
* :class:`GlowStep`, :class:`GlowLevel`; the models :func:`nfcourse.models.glow` (images)
  and :func:`nfcourse.models.glow_2d` (vectors).

The couplings are chapter 2's :class:`~nfcourse.flows.coupling.AffineCoupling`, over channels
(:class:`~nfcourse.flows.coupling.ChannelSplit`) for images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from nfcourse.core.model import FlowModel
from nfcourse.core.flow import Compose, Flow, as_event_shape
from nfcourse.flows.coupling import AffineCoupling, ChannelSplit, coupling_masks



# ----------------------------------------------------------------------------- helpers


def _event(event_shape: int | Sequence[int]) -> tuple[int, ...]:
    """Validate an event shape: ``(D,)`` for vectors or ``(C, H, W)`` for images."""
    shape = as_event_shape(event_shape)
    if shape is None or len(shape) not in (1, 3) or min(shape) < 1:
        raise ValueError(f"event_shape must be (D,) for vectors or (C, H, W) for images with "
                         f"positive sizes, got {event_shape!r}.")
    return shape


def _per_channel(v: Tensor, ndim: int) -> Tensor:
    """Reshape a per-channel vector ``[C]`` to broadcast against ``[B, C, ...]`` (``ndim`` dims)."""
    return v.reshape(1, -1, *([1] * (ndim - 2)))


def _pixels(event_shape: tuple[int, ...]) -> int:
    """How many positions a per-channel map is applied at: ``H * W`` for images, 1 for vectors."""
    return math.prod(event_shape[1:])


# ----------------------------------------------------------------------------- ActNorm


class ActNorm(Flow):
    """Per-channel affine map ``x = z * exp(log_scale) + bias`` (latent -> data).

    ActNorm replaces batch norm in Glow: batch norm in training mode normalises each sample
    with statistics of the *batch*, so its output for one sample depends on the others and it
    is not a fixed bijection. ActNorm is a fixed affine map whose parameters are merely
    *initialised* from data: on the first data -> latent pass in training mode (or an explicit
    :meth:`initialize`), ``bias`` and ``log_scale`` are set to the per-channel mean and log
    standard deviation of that batch, so the latent side starts standardised. After that the
    parameters are trained like any others and the batch no longer matters.

    The flag ``initialized`` is a registered buffer: ``load_state_dict`` restores it along with
    the trained parameters, so a loaded model is never re-initialised by its first batch.

    Args:
        event_shape: ``(D,)`` (channels = features) or ``(C, H, W)``.
        eps: added to the standard deviation so a constant channel does not give ``log(0)``.

    Log-det of ``forward``: ``H * W * sum(log_scale)`` per sample.
    """

    def __init__(self, event_shape: int | Sequence[int], eps: float = 1e-6) -> None:
        shape = _event(event_shape)
        super().__init__(shape)
        channels = shape[0]
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))
        self.eps = float(eps)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set the parameters from a data batch ``x: [B, C, ...]`` (data side) and mark done."""
        x = self._validate(x, "initialize", "x")
        values = x.transpose(0, 1).reshape(x.shape[1], -1)        # [C, B*H*W]
        if values.shape[1] < 2:
            raise ValueError("ActNorm.initialize needs at least 2 values per channel to "
                             f"estimate a spread, got a batch of shape {list(x.shape)}; "
                             "initialise with a larger batch.")
        self.bias.copy_(values.mean(dim=1))
        self.log_scale.copy_(torch.log(values.std(dim=1) + self.eps))
        self.initialized.fill_(True)

    def _logdet(self, batch: int) -> Tensor:
        return (_pixels(self.event_shape) * self.log_scale.sum()).expand(batch)

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        s, b = _per_channel(self.log_scale, z.dim()), _per_channel(self.bias, z.dim())
        return z * s.exp() + b, self._logdet(z.shape[0])

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not bool(self.initialized):
            self.initialize(x)
        s, b = _per_channel(self.log_scale, x.dim()), _per_channel(self.bias, x.dim())
        return (x - b) * (-s).exp(), -self._logdet(x.shape[0])


@torch.no_grad()
def initialize_actnorms(flow: nn.Module, x: Tensor) -> int:
    """Data-dependent initialisation of every ActNorm in ``flow`` from one data batch.

    Runs one data -> latent pass in training mode (each ActNorm initialises from what reaches
    it, in order), restores the previous mode, and returns how many ActNorms it initialised.
    ``flow`` may be a :class:`Flow` or a ``FlowModel``. Layers already initialised (e.g.
    loaded from a checkpoint) are left alone.
    """
    if isinstance(flow, FlowModel):
        target: Flow = flow.flow
    elif isinstance(flow, Flow):
        target = flow
    else:
        raise TypeError(f"initialize_actnorms expects a Flow or a FlowModel, got "
                        f"{type(flow).__name__}.")
    actnorms = [m for m in flow.modules() if isinstance(m, ActNorm)]
    before = sum(bool(a.initialized) for a in actnorms)
    was_training = flow.training
    flow.train()
    try:
        target.inverse(x)
    finally:
        flow.train(was_training)
    return sum(bool(a.initialized) for a in actnorms) - before


# ----------------------------------------------------------------------------- 1x1 mixing


def _random_rotation(channels: int, generator: torch.Generator | None) -> Tensor:
    """A random orthogonal ``[C, C]`` matrix (QR of a Gaussian): log|det| = 0 at the start."""
    q, r = torch.linalg.qr(torch.randn(channels, channels, generator=generator,
                                       dtype=torch.float64))
    # fix the signs so the result is uniformly distributed (Haar), not biased by QR's choices
    return (q * torch.sign(torch.diagonal(r))).to(torch.get_default_dtype())


class _ChannelMix(Flow):
    """``z = W x`` over the channel axis at every position; dense or LU-parameterised ``W``.

    As in the Glow paper, ``W`` acts in the data -> latent direction (``inverse``), the one
    training uses, so a training step needs only a matrix product and ``log|det W|``;
    sampling (``forward``, ``x = W^{-1} z``) pays for the inverse.

    ``lu=False`` stores ``W`` itself; ``log|det W|`` needs ``slogdet`` (an O(C^3) LU
    factorisation) on every call. ``lu=True`` stores the factors of ``W = P L U``: a fixed
    permutation ``P``, a unit lower-triangular ``L`` and an upper-triangular ``U`` whose
    diagonal is ``sign * exp(log_abs_diag)``; then ``log|det W| = sum(log_abs_diag)``, O(C).
    (Building ``W`` from its factors is still a matrix product; what LU saves is the
    determinant and its gradient, and ``W^{-1}`` becomes two triangular solves.)
    Both start from the same random rotation (for the same ``generator``).
    """

    def __init__(self, event_shape: tuple[int, ...], lu: bool,
                 generator: torch.Generator | None) -> None:
        super().__init__(event_shape)
        c = event_shape[0]
        w0 = _random_rotation(c, generator)
        self.lu = bool(lu)
        if not self.lu:
            self.weight = nn.Parameter(w0)
            return
        p, lower, upper = torch.linalg.lu(w0)
        diag = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign_diag", torch.sign(diag))
        # Only the strictly lower / strictly upper entries are used; masks fix the rest, so the
        # triangular structure cannot be broken by an optimiser step.
        self.register_buffer("lower_mask", torch.tril(torch.ones(c, c), -1))
        self.register_buffer("eye", torch.eye(c))
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_abs_diag = nn.Parameter(torch.log(diag.abs()))

    def _factors(self) -> tuple[Tensor, Tensor]:
        """``(L, U)`` with unit diagonal on ``L`` and ``sign * exp(log_abs_diag)`` on ``U``."""
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_diag
                                                            * self.log_abs_diag.exp())
        return lower, upper

    def weight_matrix(self) -> Tensor:
        """The ``[C, C]`` matrix ``W`` of the data -> latent map ``z = W x``."""
        if not self.lu:
            return self.weight
        lower, upper = self._factors()
        return self.perm @ lower @ upper

    def log_abs_det(self) -> Tensor:
        """``log|det W|`` (a scalar): ``slogdet`` for dense, ``sum(log_abs_diag)`` for LU."""
        if not self.lu:
            return torch.linalg.slogdet(self.weight)[1]
        return self.log_abs_diag.sum()

    def inverse_matrix(self) -> Tensor:
        """``W^{-1}``: a dense inverse, or ``U^{-1} L^{-1} P^T`` by two triangular solves."""
        if not self.lu:
            return torch.linalg.inv(self.weight)
        lower, upper = self._factors()
        l_inv = torch.linalg.solve_triangular(lower, self.eye, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, l_inv @ self.perm.T, upper=True)

    @staticmethod
    def _mix(matrix: Tensor, v: Tensor) -> Tensor:
        # channel axis is dim 1; the same matrix acts at every pixel (a 1x1 convolution)
        if v.dim() == 2:
            return v @ matrix.T
        return torch.einsum("ij,bj...->bi...", matrix, v)

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        ld = _pixels(self.event_shape) * self.log_abs_det()
        return self._mix(self.weight_matrix(), x), ld.expand(x.shape[0])

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        ld = _pixels(self.event_shape) * self.log_abs_det()
        return self._mix(self.inverse_matrix(), z), (-ld).expand(z.shape[0])


class InvertibleLinear(_ChannelMix):
    """A learned invertible ``D x D`` linear map on vectors ``[B, D]``: ``z = W x``.

    The vector version of Glow's 1x1 convolution. ``lu=True`` (default) parameterises
    ``W = P L U`` so ``log|det W|`` is a sum of ``D`` numbers; ``lu=False`` stores ``W`` densely.
    """

    def __init__(self, features: int, lu: bool = True,
                 generator: torch.Generator | None = None) -> None:
        if not isinstance(features, int) or features < 1:
            raise ValueError(f"InvertibleLinear: features must be a positive int, got "
                             f"{features!r}.")
        super().__init__((features,), lu, generator)


class InvertibleConv1x1(_ChannelMix):
    """Glow's invertible 1x1 convolution on images ``[B, C, H, W]``: ``z[:, :, h, w] = W x[...]``.

    A 1x1 convolution applies the same ``C x C`` matrix at every pixel, so the Jacobian is
    block diagonal with ``H * W`` copies of ``W``: ``log|det| = H * W * log|det W|``.
    """

    def __init__(self, event_shape: Sequence[int], lu: bool = True,
                 generator: torch.Generator | None = None) -> None:
        shape = _event(event_shape)
        if len(shape) != 3:
            raise ValueError(f"InvertibleConv1x1 works on images; event_shape must be (C, H, W), "
                             f"got {shape}. Use InvertibleLinear for vectors.")
        super().__init__(shape, lu, generator)


# ----------------------------------------------------------------------------- squeeze


def squeeze2d(x: Tensor, factor: int = 2) -> Tensor:
    """Space to channels: ``[B, C, H, W] -> [B, C*f*f, H/f, W/f]`` (a permutation: log-det 0).

    Each ``f x f`` block of pixels becomes ``f*f`` channels at one position. Channel
    ``c * f*f + i * f + j`` of the output holds pixel ``(i, j)`` of the block of input channel
    ``c``, so the first output channels come from the first input channel.
    """
    if x.dim() != 4:
        raise ValueError(f"squeeze2d expects images [B, C, H, W], got shape {list(x.shape)}.")
    b, c, h, w = x.shape
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f"squeeze2d: height and width ({h}, {w}) must be divisible by the "
                         f"factor {factor}; pad or crop the images first.")
    x = x.reshape(b, c, h // factor, factor, w // factor, factor)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * factor * factor, h // factor, w // factor)


def unsqueeze2d(x: Tensor, factor: int = 2) -> Tensor:
    """Channels to space, the exact inverse of :func:`squeeze2d`: ``[B, C*f*f, h, w] -> [B, C,
    h*f, w*f]``."""
    if x.dim() != 4:
        raise ValueError(f"unsqueeze2d expects [B, C, H, W], got shape {list(x.shape)}.")
    b, c, h, w = x.shape
    if factor < 1 or c % (factor * factor):
        raise ValueError(f"unsqueeze2d: channels ({c}) must be divisible by factor^2 = "
                         f"{factor * factor}.")
    x = x.reshape(b, c // (factor * factor), factor, factor, h, w)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(b, c // (factor * factor), h * factor, w * factor)


# ----------------------------------------------------------------------------- coupling


class Split(AffineCoupling):
    """Factor out the last ``C - C // 2`` channels with a learned conditional Gaussian prior.

    In Glow the factored-out half ``x_b`` gets the prior ``N(mu(x_a), sigma(x_a)^2)`` and the
    kept half ``x_a`` goes on to deeper levels. Written as a flow, ``x_b = mu + sigma * eps``
    with ``eps ~ N(0, I)``: the inverse returns ``(x_a, eps)`` and its log-det ``-sum(log
    sigma)``, so ``N(eps; 0, I) + logdet = log N(x_b; mu, sigma^2)`` exactly. The prior network is
    one zero-initialised 3x3 convolution, so it starts as ``N(0, I)``. It is an affine
    coupling over channels (:class:`ChannelSplit`) whose conditioner has no hidden layer.
    """

    def __init__(self, event_shape: Sequence[int], scale_bound: float = 3.0) -> None:
        super().__init__(ChannelSplit(event_shape), hidden=None, scale_bound=scale_bound)
        self.kept = self.partition.kept_channels


# ----------------------------------------------------------------------------- Glow


class GlowStep(Compose):
    """One Glow step. Data -> latent (``inverse``): ActNorm, then the invertible 1x1
    convolution (or linear map), then the affine coupling; ``forward`` runs them backwards.

    Works on images (``(C, H, W)``: :class:`InvertibleConv1x1` + chapter 2's
    :class:`AffineCoupling` over channels, :class:`ChannelSplit`) and on vectors (``(D,)``:
    :class:`InvertibleLinear` + the coupling with a fixed "halves" split); the learned mixing
    replaces the alternation of masks.

    Args:
        event_shape: ``(D,)`` or ``(C, H, W)``.
        hidden: width of the coupling network (channels for images, units for vectors).
        lu: LU-parameterised mixing (default) or dense.
        depth: hidden layers of the vector coupling network (images: see ``blocks``).
        blocks: gated residual blocks of an image coupling's conditioner (0: the plain
            three-convolution net).
    """

    def __init__(self, event_shape: int | Sequence[int], hidden: int = 64, lu: bool = True,
                 depth: int = 2, scale_bound: float = 3.0,
                 generator: torch.Generator | None = None, *, blocks: int = 0) -> None:
        shape = _event(event_shape)
        mix: Flow
        coupling: Flow
        if len(shape) == 1:
            mix = InvertibleLinear(shape[0], lu, generator)
            coupling = AffineCoupling(coupling_masks(shape[0], 1, "halves")[0], hidden, depth,
                                      scale_bound)
        else:
            mix = InvertibleConv1x1(shape, lu, generator)
            coupling = AffineCoupling(ChannelSplit(shape), hidden, scale_bound=scale_bound,
                                      blocks=blocks)
        # Compose runs its list in the forward (latent -> data) direction, so the data -> latent
        # order ActNorm -> mix -> coupling is the reverse of this list.
        super().__init__(coupling, mix, ActNorm(shape), event_shape=shape)


class GlowLevel(Flow):
    """One scale of a multi-scale Glow, a bijection of ``[B, C, H, W]`` onto itself.

    Data -> latent (``inverse``): squeeze to ``(4C, H/2, W/2)``, run ``steps`` Glow steps, then
    (unless this is the last level) split: the first half of the channels goes through the
    next level, the second half is turned into standard-normal noise by the learned prior.
    The latent is reassembled in the same layout and unsqueezed, so the whole model keeps the
    image's shape and a plain ``N(0, I)`` base on it is Glow's hierarchy of priors.

    Why multi-scale: the factored-out half stops at this scale, so deeper levels (which see
    larger receptive fields after each squeeze) process only half as many numbers, and the
    prior of the factored half is conditioned on the rest, a coarse-to-fine model.
    """

    def __init__(self, event_shape: Sequence[int], steps: int, hidden: int, levels: int,
                 lu: bool = True, generator: torch.Generator | None = None) -> None:
        shape = _event(event_shape)
        if len(shape) != 3:
            raise ValueError(f"GlowLevel works on images (C, H, W), got {shape}.")
        c, h, w = shape
        if h % 2 or w % 2:
            raise ValueError(f"GlowLevel: image size {h}x{w} must be even at every level "
                             "(each level halves it); use fewer levels or pad the images.")
        if steps < 1 or levels < 1:
            raise ValueError(f"GlowLevel: steps and levels must be >= 1, got steps={steps}, "
                             f"levels={levels}.")
        super().__init__(shape)
        inner_shape = (4 * c, h // 2, w // 2)
        self.steps = Compose(*[GlowStep(inner_shape, hidden, lu, generator=generator)
                               for _ in range(steps)], event_shape=inner_shape)
        self.split: Split | None = None
        self.inner: GlowLevel | None = None
        if levels > 1:
            self.split = Split(inner_shape)
            self.inner = GlowLevel((self.split.kept, h // 2, w // 2), steps, hidden, levels - 1,
                                   lu, generator)

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, logdet = self.steps._inverse(squeeze2d(x))
        if self.split is not None and self.inner is not None:
            y, ld_split = self.split._inverse(y)
            kept = self.split.kept
            z_kept, ld_inner = self.inner._inverse(y[:, :kept])
            y = torch.cat([z_kept, y[:, kept:]], dim=1)
            logdet = logdet + ld_split + ld_inner
        return unsqueeze2d(y), logdet

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        y = squeeze2d(z)
        logdet = z.new_zeros(z.shape[0])
        if self.split is not None and self.inner is not None:
            kept = self.split.kept
            x_kept, ld_inner = self.inner._forward(y[:, :kept])
            y, ld_split = self.split._forward(torch.cat([x_kept, y[:, kept:]], dim=1))
            logdet = ld_inner + ld_split
        x, ld_steps = self.steps._forward(y)
        return unsqueeze2d(x), logdet + ld_steps

    def levels(self) -> list[GlowLevel]:
        """This level and the ones below it, outermost first."""
        out: list[GlowLevel] = [self]
        while out[-1].inner is not None:
            out.append(out[-1].inner)  # type: ignore[arg-type]
        return out


