"""The learned velocity field ``v_theta(t, x)`` of flow matching.

Unlike :class:`nfcourse.cnf.TimeMLP`, which takes one time for the whole batch (an ODE solver
only ever asks for that), flow-matching training evaluates the field at a *different* time
for every row, so :class:`VelocityMLP` accepts ``t`` as a float, a 0-d tensor, or ``[B]``.
It has the ``field(t, x)`` signature the CNF solvers expect, so a trained field plugs
straight into :mod:`nfcourse.cnf` for sampling and exact likelihoods.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

_ACTIVATIONS = {"silu": nn.SiLU, "tanh": nn.Tanh, "softplus": nn.Softplus}


class VelocityMLP(nn.Module):
    """``v(t, x)``: ``x [B, D]`` and ``t`` (float, 0-d or ``[B]``) -> velocity ``[B, D]``.

    Every hidden layer sees the time through a few Fourier features
    ``(t, sin 2 pi k t, cos 2 pi k t)``, ``k = 1..frequencies``; smooth activations keep the
    field differentiable for the exact divergence and adaptive solvers.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3,
                 activation: str = "silu", frequencies: int = 2) -> None:
        super().__init__()
        if dim < 1 or hidden < 1 or layers < 1 or frequencies < 0:
            raise ValueError(f"VelocityMLP: dim, hidden, layers must be >= 1 and frequencies >= "
                             f"0, got {dim}, {hidden}, {layers}, {frequencies}.")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"VelocityMLP: unknown activation {activation!r}; choose one of "
                             f"{', '.join(_ACTIVATIONS)}.")
        self.dim, self.frequencies = dim, frequencies
        n_t = 1 + 2 * frequencies
        widths = [dim] + [hidden] * layers
        self.hidden = nn.ModuleList(nn.Linear(a + n_t, b) for a, b in zip(widths, widths[1:]))
        self.out = nn.Linear(hidden, dim)
        self.act = _ACTIVATIONS[activation]()

    def time_features(self, t: Tensor | float, x: Tensor) -> Tensor:
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
        return torch.cat(feats, dim=1)

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"VelocityMLP: x must be [B, {self.dim}], got "
                             f"{getattr(x, 'shape', type(x).__name__)}.")
        tf = self.time_features(t, x)
        h = x
        for layer in self.hidden:
            h = self.act(layer(torch.cat([h, tf], dim=1)))
        return self.out(h)
