"""The networks inside the flows: conditioners and time-conditioned vector fields.

* :func:`mlp` -- the conditioner of vector couplings (and the VAE's encoder and decoder).
* :func:`conv_net` -- the conditioner of image couplings and of the split prior.
* :func:`gated_resnet` -- the deeper image conditioner of the book's MNIST models: gated
  residual blocks (PixelCNN++ / Flow++ style) with a layer norm over channels.
* :class:`VelocityMLP` -- the vector field ``v(t, x)`` of continuous flows and flow matching.

Every conditioner ends in a zero-initialised layer, so a new coupling is the identity map and
training starts from the base distribution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ACTIVATIONS = {"tanh": nn.Tanh, "softplus": nn.Softplus, "silu": nn.SiLU}


class ReLU(nn.ReLU):
    """``nn.ReLU`` that overwrites its input when no gradient is being recorded.

    At inference (``torch.no_grad``: sampling, ``log_prob`` of a large batch) writing in place
    saves allocating a ``[B, hidden]`` tensor per layer; with autograd on it returns a new
    tensor as ``nn.ReLU`` does (in place there was measured no faster). The same values either
    way.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x, inplace=not torch.is_grad_enabled())


def _activation(activation: type[nn.Module]) -> nn.Module:
    """The activation module; ReLU is :class:`ReLU` (in place at inference)."""
    return ReLU() if activation is nn.ReLU else activation()


def mlp(inputs: int, outputs: int, hidden: int, depth: int = 2,
        activation: type[nn.Module] = nn.ReLU, zero_last: bool = True) -> nn.Sequential:
    """``inputs -> hidden (x depth) -> outputs``; the last layer starts at zero if ``zero_last``.

    A zero last layer makes ``s = t = 0``, so a freshly built coupling flow is the identity and
    training starts from the base distribution rather than from a random warp of it.
    ReLU works in place at inference (:class:`ReLU`): a linear layer's output is needed by
    nothing else, so overwriting it saves a ``[B, hidden]`` tensor per layer.
    """
    layers: list[nn.Module] = []
    width = inputs
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), _activation(activation)]
        width = hidden
    last = nn.Linear(width, outputs)
    if zero_last:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


def conv_net(inputs: int, outputs: int, hidden: int | None) -> nn.Sequential:
    """Conditioner for image couplings: ``3x3 -> ReLU -> 1x1 -> ReLU -> 3x3`` (zero last).

    ``hidden=None`` gives a single zero-initialised 3x3 convolution (Glow's split prior). The
    last convolution starts at zero so a new coupling (or prior) is the identity (or
    ``N(0, I)``), as for the vector couplings of chapter 2.
    """
    if hidden is None:
        layers: list[nn.Module] = []
        last = nn.Conv2d(inputs, outputs, 3, padding=1)
    else:
        if hidden < 1:
            raise ValueError(f"hidden channels must be >= 1, got {hidden}.")
        layers = [nn.Conv2d(inputs, hidden, 3, padding=1), nn.ReLU(),
                  nn.Conv2d(hidden, hidden, 1), nn.ReLU()]
        last = nn.Conv2d(hidden, outputs, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class ConcatELU(nn.Module):
    """``[elu(x), elu(-x)]`` along the channels (doubles them): unlike a plain ELU it loses
    no information about negative inputs, which matters in a network that outputs a shift."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([F.elu(x), F.elu(-x)], dim=1)


class ChannelNorm(nn.Module):
    """Layer norm over the channels of each pixel of ``[B, C, H, W]`` (learned gain, bias).

    It normalises each example on its own, so the coupling it sits in stays a function of
    one image (batch norm would make ``log p(x)`` depend on the rest of the batch).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] == 0:               # an empty batch has no statistics to take
            return x * self.weight + self.bias
        # Two passes (the mean, then the mean square of x - mean) rather than torch.var_mean:
        # on the CPU var_mean over the channel axis of [B, C, H, W] is a strided one-pass
        # reduction 6-17x slower than two plain means (appendix, multi-scale MNIST), and the
        # two-pass variance is the numerically careful one anyway.
        mean = x.mean(dim=1, keepdim=True)
        centred = x - mean
        var = (centred * centred).mean(dim=1, keepdim=True)
        return centred * torch.rsqrt(var + self.eps) * self.weight + self.bias


class GatedResidualBlock(nn.Module):
    """``norm(x + a * sigmoid(g))`` with ``[a, g] = conv1x1(celu(conv3x3(celu(x))))``.

    The gate lets each block start close to the identity and open gradually, which is why a
    stack of them trains stably where a plain ReLU stack of the same depth does not.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(ConcatELU(), nn.Conv2d(2 * channels, channels, 3, padding=1),
                                  ConcatELU(), nn.Conv2d(2 * channels, 2 * channels, 1))
        self.norm = ChannelNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        a, g = self.body(x).chunk(2, dim=1)
        return self.norm(x + a * torch.sigmoid(g))


def gated_resnet(inputs: int, outputs: int, hidden: int, blocks: int) -> nn.Sequential:
    """Image conditioner ``[B, inputs, H, W] -> [B, outputs, H, W]``: a 3x3 convolution to
    ``hidden`` channels, ``blocks`` :class:`GatedResidualBlock`, then concat-ELU and a
    zero-initialised 3x3 convolution (so a new coupling is the identity)."""
    if hidden < 1 or blocks < 1:
        raise ValueError(f"gated_resnet needs hidden >= 1 and blocks >= 1, got hidden={hidden}, "
                         f"blocks={blocks}.")
    last = nn.Conv2d(2 * hidden, outputs, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Conv2d(inputs, hidden, 3, padding=1),
                         *[GatedResidualBlock(hidden) for _ in range(blocks)], ConcatELU(), last)


def image_net(inputs: int, outputs: int, hidden: int | None, blocks: int = 0) -> nn.Sequential:
    """The conditioner of an image coupling: :func:`conv_net` (``blocks=0``) or
    :func:`gated_resnet` with ``blocks`` gated residual blocks."""
    if blocks < 0:
        raise ValueError(f"blocks must be >= 0, got {blocks}.")
    if blocks == 0:
        return conv_net(inputs, outputs, hidden)
    if hidden is None:
        raise ValueError("a gated conditioner (blocks > 0) needs a hidden width.")
    return gated_resnet(inputs, outputs, hidden, blocks)


class VelocityMLP(nn.Module):
    """A time-dependent vector field ``v(t, x)``: ``x [B, D]``, ``t`` (float, 0-d or ``[B]``).

    Every hidden layer sees the time as extra inputs, so the field can change its shape along
    the flow, not only its input: ``t`` itself and, with ``frequencies = K > 0``, the Fourier
    features ``sin 2 pi k t, cos 2 pi k t`` for ``k = 1..K``. Smooth activations (``tanh``,
    ``softplus``, ``silu``) keep the field differentiable, which the exact divergence and
    adaptive solvers need. The defaults are flow matching's field; a CNF (chapter 4) uses
    ``frequencies=0, time_in_output=True, zero_last=True``: the time enters the output layer
    too, and that layer starts at zero, so the initial flow is the identity, the easiest ODE
    there is to solve.

    Args:
        dim: ``D``; hidden, layers: width and number of hidden layers.
        activation: ``"tanh"``, ``"softplus"`` or ``"silu"``.
        frequencies: Fourier frequencies of the time features (0: ``t`` alone).
        time_in_output: whether the output layer sees the time features too.
        zero_last: start the output layer at zero (``v = 0``).
    """

    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3,
                 activation: str = "silu", frequencies: int = 2, *,
                 time_in_output: bool = False, zero_last: bool = False) -> None:
        super().__init__()
        if dim < 1 or hidden < 1 or layers < 1 or frequencies < 0:
            raise ValueError(f"VelocityMLP: dim, hidden, layers must be >= 1 and frequencies >= "
                             f"0, got {dim}, {hidden}, {layers}, {frequencies}.")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"VelocityMLP: unknown activation {activation!r}; choose one of "
                             f"{', '.join(_ACTIVATIONS)}.")
        self.dim, self.frequencies = dim, frequencies
        self.time_in_output = bool(time_in_output)
        n_t = 1 + 2 * frequencies
        widths = [dim] + [hidden] * layers
        self.hidden = nn.ModuleList(nn.Linear(a + n_t, b) for a, b in zip(widths, widths[1:]))
        self.out = nn.Linear(hidden + (n_t if time_in_output else 0), dim)
        if zero_last:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        self.act = _ACTIVATIONS[activation]()

    def time_features(self, t: Tensor | float, x: Tensor) -> Tensor:
        """``[B, 1 + 2 K]``: ``t`` broadcast to the batch of ``x``, then its Fourier features."""
        b = x.shape[0]
        if isinstance(t, Tensor):
            t = t.to(dtype=x.dtype, device=x.device)
            if t.dim() == 0 or t.numel() == 1:
                t = t.reshape(1).expand(b)
            elif t.shape != (b,):
                raise ValueError(f"VelocityMLP: t must be a float, a 0-d tensor or [B] = [{b}], "
                                 f"got shape {list(t.shape)}.")
        else:
            t = torch.full((b,), float(t), dtype=x.dtype, device=x.device)
        feats = [t[:, None]]
        for k in range(1, self.frequencies + 1):
            feats += [torch.sin(2 * math.pi * k * t)[:, None],
                      torch.cos(2 * math.pi * k * t)[:, None]]
        return torch.cat(feats, dim=1) if self.frequencies else feats[0]

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        """``v(t, x)``, shape ``[B, D]``."""
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"VelocityMLP: x must be [B, {self.dim}], got "
                             f"{getattr(x, 'shape', type(x).__name__)}.")
        tf = self.time_features(t, x)
        h = x
        for layer in self.hidden:
            h = self.act(layer(torch.cat([h, tf], dim=1)))
        return self.out(torch.cat([h, tf], dim=1) if self.time_in_output else h)
