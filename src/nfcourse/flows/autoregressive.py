"""Autoregressive flows: MADE, and masked autoregressive (MAF) and inverse autoregressive (IAF)
flows with an affine or rational-quadratic spline transformer.

An autoregressive flow transforms coordinate ``i`` (in some order) elementwise, with
parameters that depend on the coordinates *before* ``i`` only. The Jacobian is then
triangular in that order and its log-determinant is the sum of the elementwise ones. All
``D`` parameter sets come out of one pass of one network, MADE (Germain et al. 2015, "Masked
Autoencoder for Distribution Estimation"): a multilayer perceptron whose weight matrices are
multiplied by fixed 0/1 masks. Each unit gets a *degree*: input ``i`` the position of
coordinate ``i`` in the order (1..D), hidden units a degree in 1..D-1, and a unit may read
only units of degree ``<=`` its own (hidden layers) or ``<`` its own (outputs, whose degree is
that of the input they parameterise). So output ``i`` can depend on input ``j`` only through a
chain of degrees ``deg(j) <= ... < deg(i)``: only on earlier coordinates.

Which side the network reads decides which direction is one pass:

* **MAF** (Papamakarios et al. 2017, "Masked Autoregressive Flow for Density Estimation"):
  the parameters are functions of the *data*, ``x_i = tau(z_i; theta_i(x_<i))``. Density
  evaluation (``inverse``, data -> latent) knows all of ``x``: one MADE pass. Sampling
  (``forward``) must produce ``x_1`` before it can compute ``theta_2``: ``D`` sequential passes.
* **IAF** (Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive
  Flow"): the parameters are functions of the *latent*, ``x_i = tau(z_i; theta_i(z_<i))``.
  Sampling is one pass, density evaluation of a given ``x`` needs ``D`` passes. IAF suits
  variational inference, where one samples and scores one's own samples.

``tau`` is the affine map ``z * exp(s) + t`` (the soft-clamped log-scale of
:class:`~nfcourse.flows.coupling.AffineCoupling`) or the rational-quadratic spline
(:class:`~nfcourse.flows.spline.RQSpline`). The spline is evaluated forward in the one-pass
direction and by its quadratic's root in the sequential one: MAF's spline maps data to
latent (``z_i = spline(x_i)``, as in Durkan et al.), IAF's latent to data. In the
sequential direction each pass fixes one more coordinate; after ``D`` passes all are exact,
and so are the parameters of the last pass (the last coordinate in the order feeds no
output), hence the log-determinant too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfcourse.core.flow import Flow
from nfcourse.flows.coupling import soft_clamp
from nfcourse.flows.spline import DEFAULT_BOUND, RQSpline
from nfcourse.nn import _activation

CONVENTIONS = ("maf", "iaf")
TRANSFORMERS = ("affine", "spline")


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 ``mask [out, in]``.

    The mask is a (non-saved) buffer, rebuilt from the constructor's arguments.
    """

    def __init__(self, in_features: int, out_features: int, mask: Tensor) -> None:
        super().__init__(in_features, out_features)
        mask = torch.as_tensor(mask)
        if tuple(mask.shape) != (out_features, in_features):
            raise ValueError(f"MaskedLinear: the mask must have shape [out, in] = "
                             f"[{out_features}, {in_features}], got {list(mask.shape)}.")
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def effective_parameters(module: nn.Module) -> int:
    """Trainable numbers of ``module``, not counting the weights that a :class:`MaskedLinear`'s
    mask fixes at zero (they are stored, but can never change the output)."""
    masked = sum(int((m.mask == 0).sum()) for m in module.modules()
                 if isinstance(m, MaskedLinear))
    return sum(p.numel() for p in module.parameters() if p.requires_grad) - masked


def made_degrees(features: int, hidden: int, depth: int,
                 order: Sequence[int] | None = None) -> list[Tensor]:
    """Degrees of MADE's units: ``[inputs [D], hidden layer 1, ..., hidden layer depth]``.

    ``order`` lists the coordinates from first to last (default ``0, 1, ..., D-1``); input
    ``order[k]`` gets degree ``k + 1``. Hidden units cycle through ``1..max(1, D-1)``, so every
    degree is present when ``hidden >= D - 1``.
    """
    order_t = torch.arange(features) if order is None else torch.as_tensor(list(order))
    if sorted(order_t.tolist()) != list(range(features)):
        raise ValueError(f"order must be a permutation of 0..{features - 1}, got "
                         f"{order_t.tolist()}.")
    inputs = torch.empty(features, dtype=torch.long)
    inputs[order_t] = torch.arange(1, features + 1)
    hidden_deg = torch.arange(hidden) % max(1, features - 1) + 1
    return [inputs] + [hidden_deg] * depth


class MADE(nn.Module):
    """Masked autoencoder: ``x [B, D] -> params [B, D, P]``, where ``params[:, i]`` depends on
    the inputs that come before ``i`` in ``order`` only (and ``params[:, order[0]]`` on none).

    Args:
        features: ``D``.
        params: ``P``, numbers per coordinate (2 for an affine map, ``3K - 1`` for a spline).
        hidden: units per hidden layer (at least ``D - 1`` so every degree is represented).
        depth: hidden layers.
        order: coordinates from first to last (default ``0..D-1``).
        zero_last: start the output layer at zero (a flow built on it starts as the identity).
    """

    def __init__(self, features: int, params: int, hidden: int = 64, depth: int = 2, *,
                 order: Sequence[int] | None = None, activation: type[nn.Module] = nn.ReLU,
                 zero_last: bool = True) -> None:
        if features < 1 or params < 1 or hidden < 1 or depth < 0:
            raise ValueError(f"MADE needs features, params, hidden >= 1 and depth >= 0; got "
                             f"{features}, {params}, {hidden}, {depth}.")
        super().__init__()
        self.features, self.params = features, params
        degrees = made_degrees(features, hidden, depth, order)
        self.register_buffer("input_degrees", degrees[0], persistent=False)
        layers: list[nn.Module] = []
        for before, after in zip(degrees, degrees[1:]):
            layers += [MaskedLinear(len(before), len(after), after[:, None] >= before[None, :]),
                       _activation(activation)]
        # output unit i * P + p is parameter p of input i: [B, D * P] views as [B, D, P]
        # without a copy, and every parameter set is contiguous in memory
        out_deg = degrees[0].repeat_interleave(params)
        last = MaskedLinear(len(degrees[-1]), params * features,
                            out_deg[:, None] > degrees[-1][None, :])
        if zero_last:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).reshape(x.shape[0], self.features, self.params)


class AffineTransformer(nn.Module):
    """``x = z * exp(s) + t`` elementwise, ``params [..., 2] = (raw s, t)``, with
    ``s = soft_clamp(raw s, scale_bound)`` as in the affine coupling."""

    params = 2

    def __init__(self, scale_bound: float = 3.0) -> None:
        if not scale_bound > 0:
            raise ValueError(f"scale_bound must be > 0, got {scale_bound}.")
        super().__init__()
        self.scale_bound = float(scale_bound)

    def forward(self, v: Tensor, params: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor]:
        s = soft_clamp(params[..., 0], self.scale_bound)
        t = params[..., 1]
        if inverse:
            return (v - t) * torch.exp(-s), -s
        return v * torch.exp(s) + t, s


class MaskedAutoregressive(Flow):
    """A masked autoregressive flow layer, MAF or IAF, affine or spline (see the module text).

    ``forward(z) -> (x, logdet)`` is latent to data. With ``convention="maf"`` ``inverse`` (the
    density direction) is one MADE pass and ``forward`` (sampling) ``D`` passes; with
    ``"iaf"`` it is the other way round. The MADE's last layer starts at zero, so a new layer
    is the identity.

    Args:
        features: ``D``, the size of the vectors ``[B, D]``.
        hidden, depth, activation: MADE's hidden layers.
        transformer: ``"affine"`` or ``"spline"`` (a rational-quadratic spline of ``bins`` bins
            on ``[-bound, bound]``, identity outside).
        convention: ``"maf"`` or ``"iaf"``.
        order: the autoregressive order (default ``0..D-1``); stacked layers usually reverse it.
        scale_bound: the affine transformer's bound on ``|log-scale|``.
    """

    def __init__(self, features: int, hidden: int = 64, depth: int = 2, *,
                 transformer: str = "affine", convention: str = "maf",
                 order: Sequence[int] | None = None, bins: int = 8,
                 bound: float = DEFAULT_BOUND, scale_bound: float = 3.0,
                 activation: type[nn.Module] = nn.ReLU) -> None:
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be 'maf' or 'iaf', got {convention!r}.")
        if transformer not in TRANSFORMERS:
            raise ValueError(f"transformer must be 'affine' or 'spline', got {transformer!r}.")
        if isinstance(features, bool) or not isinstance(features, int) or features < 1:
            raise ValueError(f"features must be an int >= 1, got {features!r}.")
        tau: nn.Module = (AffineTransformer(scale_bound) if transformer == "affine"
                          else RQSpline(bins, bound))
        super().__init__((features,))
        self.convention, self.transformer_kind = convention, transformer
        self.transformer = tau
        # The spline is evaluated forward (a rational function) in the one-pass direction and
        # inverted (the quadratic's root) in the sequential one. For MAF the one-pass direction
        # is the density, the one maximum likelihood trains: with the root there instead, the
        # same two-moons runs of chapter 10 ended at KLs up to about twice as large when this
        # was written. So MAF's spline maps data to latent, IAF's latent to data; the affine map
        # is cheap either way.
        self._flip = transformer == "spline" and convention == "maf"
        self.made = MADE(features, tau.params, hidden, depth, order=order,  # type: ignore[arg-type]
                         activation=activation)

    def extra_repr(self) -> str:
        return f"convention={self.convention!r}"

    def _one_pass(self, v: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """Parameters from ``v`` itself, then the transformer: the cheap direction."""
        out, ld = self.transformer(v, self.made(v), inverse=inverse != self._flip)
        return out, ld.sum(dim=1)

    def _sequential(self, target: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """Solve ``target = tau(v; theta(v))`` (or its inverse) for ``v``, one coordinate per
        MADE pass: ``D`` passes; the last one's parameters, and so its log-det, are exact."""
        v = torch.zeros_like(target)
        ld = target.new_zeros(target.shape)
        for _ in range(self.made.features):
            v, ld = self.transformer(target, self.made(v), inverse=inverse != self._flip)
        return v, ld.sum(dim=1)

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        # MAF: x_i = tau(z_i; theta(x_<i)), sequential; IAF: theta(z_<i), one pass
        if self.convention == "iaf":
            return self._one_pass(z, inverse=False)
        return self._sequential(z, inverse=False)

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.convention == "maf":
            return self._one_pass(x, inverse=True)
        return self._sequential(x, inverse=True)


__all__: Sequence[str] = ["MaskedLinear", "MADE", "made_degrees", "effective_parameters",
                          "AffineTransformer", "MaskedAutoregressive"]
