"""Neural spline flows: the monotone rational-quadratic spline and its coupling layer.

Durkan, Bekasov, Murray and Papamakarios (2019, "Neural Spline Flows") replace the affine map
of a coupling (or autoregressive) layer by a monotone *rational-quadratic* spline: on the
interval ``[-B, B]`` the real line is cut into ``K`` bins by ``K + 1`` knots ``(x_k, y_k)``
with positive slopes ``d_k`` at the knots, and inside bin ``k`` (width ``w``, height ``h``,
mean slope ``s = h / w``, position ``xi = (x - x_k) / w`` in ``[0, 1]``) the map is

    y = y_k + h * (s xi^2 + d_k xi (1 - xi)) / (s + (d_k + d_{k+1} - 2 s) xi (1 - xi)).

It is monotone (increasing) whenever all ``d_k > 0``, passes through every knot, has slope
``d_k`` at knot ``k``, and is the identity outside ``[-B, B]`` (the *linear tails*): the end
knots are ``(-B, -B)`` and ``(B, B)`` with slope 1, so the tails join with a continuous
derivative. Its derivative is a ratio of quadratics,

    dy/dx = s^2 (d_{k+1} xi^2 + 2 s xi (1 - xi) + d_k (1 - xi)^2)
            / (s + (d_k + d_{k+1} - 2 s) xi (1 - xi))^2,

so the log-determinant is analytic, and given ``y`` the position ``xi`` solves a quadratic
``a xi^2 + b xi + c = 0``, whose root in ``[0, 1]`` is taken in the form
``xi = 2 c / (-b - sqrt(b^2 - 4 a c))``, which does not cancel when ``a`` is small.

The network produces unconstrained numbers; :func:`spline_knots` turns them into knots:
bin widths and heights by a softmax (each at least ``min_bin_width``/``min_bin_height`` of the
interval), interior slopes by a softplus shifted so that 0 gives slope exactly 1. All-zero
inputs therefore give equal bins and unit slopes: the identity map. That is why a coupling
whose network ends in a zero layer (:class:`SplineCoupling`) starts as the identity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfcourse.core.flow import Flow, sum_except_batch
from nfcourse.flows.coupling import IndexSplit, Partition

DEFAULT_BOUND = 3.0
DEFAULT_MIN_BIN = 1e-3
DEFAULT_MIN_DERIVATIVE = 1e-3


def check_spline_settings(bins: int, bound: float, min_bin_width: float = DEFAULT_MIN_BIN,
                          min_bin_height: float = DEFAULT_MIN_BIN,
                          min_derivative: float = DEFAULT_MIN_DERIVATIVE) -> None:
    """Raise a ``ValueError`` naming the fix when the spline's settings cannot work."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"a spline needs bins >= 1 (an int), got {bins!r}; 8 is a good start.")
    if not (isinstance(bound, (int, float)) and math.isfinite(bound) and bound > 0):
        raise ValueError(f"the spline's bound B must be a finite number > 0 (it acts on "
                         f"[-B, B]), got {bound!r}; choose B so the data mostly lie inside.")
    for name, value in (("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height)):
        if not 0 <= value < 1 / bins:
            raise ValueError(f"{name} must be in [0, 1/bins) = [0, {1 / bins:.4g}) so that "
                             f"{bins} bins fit in the interval, got {value}; lower it or use "
                             "fewer bins.")
    if not 0 <= min_derivative < 1:
        raise ValueError(f"min_derivative must be in [0, 1) (a new spline has slope 1), got "
                         f"{min_derivative}.")


def spline_params(bins: int) -> int:
    """Unconstrained numbers per transformed coordinate: ``K`` widths, ``K`` heights and
    ``K - 1`` interior slopes."""
    return 3 * bins - 1


def _knot_table(params: Tensor, bins: int, bound: float, min_bin_width: float,
                min_bin_height: float, min_derivative: float) -> Tensor:
    """``[..., 3, K + 1]``: the rows ``x_k``, ``y_k``, ``d_k`` from packed ``params [..., 3K - 1]``
    (widths, heights, interior slopes). Written in few tensor operations: at the sizes of a
    training batch their count, not their arithmetic, sets the time."""
    k = bins
    wh = params[..., :2 * k].unflatten(-1, (2, k))
    # softmax written out: torch's kernel is slow over a short last axis (measured 1.5-2x on
    # [256, 64, 2, 4]); the shift by the (detached) maximum cancels in value and gradient
    e = torch.exp(wh - wh.detach().amax(dim=-1, keepdim=True))
    softmax = e / e.sum(dim=-1, keepdim=True)
    if min_bin_width == min_bin_height:
        frac = softmax * (1 - min_bin_width * k) + min_bin_width
    else:
        low = wh.new_tensor([[min_bin_width], [min_bin_height]])
        frac = softmax * (1 - low * k) + low
    # the end knots are padded in, not summed, so they are exactly -B and B
    inner = torch.cumsum(frac[..., :-1], dim=-1) * (2 * bound) - bound
    xy = F.pad(F.pad(inner, (1, 0), value=-bound), (0, 1), value=bound)
    shift = math.log(math.expm1(1 - min_derivative))  # softplus(0 + shift) + min = 1
    d = F.pad(F.softplus(params[..., 2 * k:] + shift) + min_derivative, (1, 1), value=1.0)
    return torch.cat([xy, d.unsqueeze(-2)], dim=-2)


def spline_knots(unnormalized_widths: Tensor, unnormalized_heights: Tensor,
                 unnormalized_derivatives: Tensor, *, bound: float = DEFAULT_BOUND,
                 min_bin_width: float = DEFAULT_MIN_BIN, min_bin_height: float = DEFAULT_MIN_BIN,
                 min_derivative: float = DEFAULT_MIN_DERIVATIVE) -> tuple[Tensor, Tensor, Tensor]:
    """Knots ``(x_k, y_k, d_k)``, each ``[..., K + 1]``, from ``[..., K]``, ``[..., K]`` and
    ``[..., K - 1]`` unconstrained numbers.

    Widths and heights: ``min + (1 - K min) softmax(u)`` of the interval's length ``2B``;
    slopes: ``min_derivative + softplus(u + c)`` with ``c`` chosen so that ``u = 0`` gives 1.
    ``x_0 = y_0 = -B`` and ``x_K = y_K = B`` exactly, and ``d_0 = d_K = 1`` (the tails' slope).
    """
    params = torch.cat([unnormalized_widths, unnormalized_heights, unnormalized_derivatives], -1)
    table = _knot_table(params, unnormalized_widths.shape[-1], bound, min_bin_width,
                        min_bin_height, min_derivative)
    return table[..., 0, :], table[..., 1, :], table[..., 2, :]


def _check_shapes(inputs: Tensor, w: Tensor, h: Tensor, d: Tensor) -> int:
    bins = w.shape[-1] if w.dim() else 0
    if bins < 1 or h.shape != w.shape or d.shape != (*w.shape[:-1], bins - 1):
        raise ValueError(
            "rational_quadratic_spline: expected unnormalized widths and heights of shape "
            "[..., K] and derivatives of shape [..., K - 1] (K >= 1 bins); got widths "
            f"{list(w.shape)}, heights {list(h.shape)}, derivatives {list(d.shape)}.")
    if inputs.shape != w.shape[:-1]:
        raise ValueError(
            f"rational_quadratic_spline: inputs of shape {list(inputs.shape)} need parameters "
            f"of shape {list(inputs.shape)} + [K]; got widths {list(w.shape)}. Give every "
            "input its own K widths, K heights and K - 1 derivatives along a last axis.")
    return bins


def rational_quadratic_spline(inputs: Tensor, unnormalized_widths: Tensor,
                              unnormalized_heights: Tensor, unnormalized_derivatives: Tensor, *,
                              inverse: bool, bound: float = DEFAULT_BOUND,
                              min_bin_width: float = DEFAULT_MIN_BIN,
                              min_bin_height: float = DEFAULT_MIN_BIN,
                              min_derivative: float = DEFAULT_MIN_DERIVATIVE
                              ) -> tuple[Tensor, Tensor]:
    """The monotone rational-quadratic spline, elementwise, with identity tails.

    Args:
        inputs: ``[...]`` values (``x`` for the spline, ``y`` with ``inverse=True``).
        unnormalized_widths, unnormalized_heights: ``[..., K]``, one set per input.
        unnormalized_derivatives: ``[..., K - 1]``: the slopes at the interior knots.
        inverse: ``False`` maps ``x -> y``; ``True`` maps ``y -> x`` (the quadratic's root).
        bound: the spline acts on ``[-B, B]``; outside it is the identity.
        min_bin_width, min_bin_height, min_derivative: floors that keep every bin and slope
            away from zero (see :func:`spline_knots`).
    Returns:
        ``(outputs [...], logabsdet [...])``: the elementwise ``log |d out / d in|`` of the
        direction computed (0 in the tails).
    """
    bins = _check_shapes(inputs, unnormalized_widths, unnormalized_heights,
                         unnormalized_derivatives)
    check_spline_settings(bins, bound, min_bin_width, min_bin_height, min_derivative)
    params = torch.cat([unnormalized_widths, unnormalized_heights, unnormalized_derivatives], -1)
    return _spline(inputs, params, bins, inverse, bound, min_bin_width, min_bin_height,
                   min_derivative)


def _spline(inputs: Tensor, params: Tensor, bins: int, inverse: bool, bound: float,
            min_bin_width: float, min_bin_height: float, min_derivative: float
            ) -> tuple[Tensor, Tensor]:
    """:func:`rational_quadratic_spline` on packed, already checked parameters."""
    table = _knot_table(params, bins, bound, min_bin_width, min_bin_height, min_derivative)
    inside = (inputs >= -bound) & (inputs <= bound)
    v = inputs.clamp(-bound, bound)          # the spline's part; the tails are put back below
    search = table[..., 1 if inverse else 0, :].detach().contiguous()
    idx = torch.searchsorted(search, v.detach().unsqueeze(-1).contiguous(), right=True) - 1
    idx = idx.clamp(0, bins - 1)
    pair = torch.cat([idx, idx + 1], dim=-1).unsqueeze(-2).expand(*idx.shape[:-1], 3, 2)
    ends = table.gather(-1, pair)                               # [..., 3 (x, y, d), 2 (k, k+1)]
    lo = ends[..., 0]
    x0, y0, d0 = lo.unbind(-1)
    size = ends[..., 1] - lo
    w, h = size[..., 0], size[..., 1]
    d1 = ends[..., 2, 1]
    s = h / w
    bend = d0 + d1 - 2 * s
    if inverse:
        dy = v - y0
        a = h * (s - d0) + dy * bend
        b = h * d0 - dy * bend
        c = -s * dy
        root = torch.sqrt((b * b - 4 * a * c).clamp_min(0))
        xi = (2 * c / (-b - root)).clamp(0, 1)
        out = x0 + xi * w
    else:
        xi = ((v - x0) / w).clamp(0, 1)
    t = xi * (1 - xi)
    den = s + bend * t
    if not inverse:
        out = y0 + h * (s * xi * xi + d0 * t) / den
    one_minus = 1 - xi
    slope = (s / den) ** 2 * (d1 * xi * xi + 2 * s * t + d0 * one_minus * one_minus)
    logabsdet = torch.log(slope)
    if inverse:
        logabsdet = -logabsdet
    return torch.where(inside, out, inputs), torch.where(inside, logabsdet,
                                                         torch.zeros_like(logabsdet))


class RQSpline(nn.Module):
    """The rational-quadratic spline as an elementwise *transformer* with fixed settings.

    ``transformer(v, params, inverse=...)`` with ``params: [..., 3K - 1]`` (widths, heights,
    interior slopes, in that order) returns ``(out, logabsdet)``, both shaped like ``v``. It
    holds no weights: the parameters come from a conditioner (a coupling's network or MADE).
    """

    def __init__(self, bins: int = 8, bound: float = DEFAULT_BOUND,
                 min_bin_width: float = DEFAULT_MIN_BIN, min_bin_height: float = DEFAULT_MIN_BIN,
                 min_derivative: float = DEFAULT_MIN_DERIVATIVE) -> None:
        check_spline_settings(bins, bound, min_bin_width, min_bin_height, min_derivative)
        super().__init__()
        self.bins, self.bound = bins, float(bound)
        self.mins = (min_bin_width, min_bin_height, min_derivative)

    @property
    def params(self) -> int:
        return spline_params(self.bins)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, bound={self.bound}"

    def forward(self, v: Tensor, params: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor]:
        if params.shape != (*v.shape, self.params):
            raise ValueError(f"RQSpline: inputs {list(v.shape)} need parameters of shape "
                             f"{list(v.shape)} + [{self.params}] (3 * bins - 1), got "
                             f"{list(params.shape)}.")
        return _spline(v, params, self.bins, inverse, self.bound, *self.mins)


class SplineCoupling(Flow):
    """A coupling layer whose transformed part goes through a rational-quadratic spline.

    The same coupling as :class:`~nfcourse.flows.coupling.AffineCoupling` (the same
    partitions: the network reads the kept part, the transformed part is changed
    elementwise, the inverse re-evaluates the network on the kept part), with a spline of
    ``bins`` bins on ``[-bound, bound]`` in place of ``z * exp(s) + t``. The spline maps the
    transformed part from data to latent (``inverse`` evaluates it, ``forward`` takes the
    root of its quadratic), so the density that training scores never takes a root. The
    network gives ``3 * bins - 1`` numbers per transformed entry; its last layer starts at
    zero, so a new layer is the identity.

    Args:
        partition: a :class:`~nfcourse.flows.coupling.Partition`, or a bool mask ``[D]``
            (``True`` = kept), which means :class:`~nfcourse.flows.coupling.IndexSplit`.
        bins, bound, min_bin_width, min_bin_height, min_derivative: the spline
            (:func:`rational_quadratic_spline`).
        hidden, depth, activation: the conditioner network (as for ``AffineCoupling``).
    """

    def __init__(self, partition: Partition | Tensor, bins: int = 8,
                 bound: float = DEFAULT_BOUND, hidden: int | None = 64, depth: int = 2,
                 activation: type[nn.Module] = nn.ReLU, *,
                 min_bin_width: float = DEFAULT_MIN_BIN, min_bin_height: float = DEFAULT_MIN_BIN,
                 min_derivative: float = DEFAULT_MIN_DERIVATIVE) -> None:
        if not isinstance(partition, Partition):
            partition = IndexSplit(partition)
        if partition.keeps_nothing:
            raise ValueError(f"SplineCoupling needs a partition that keeps something; "
                             f"{type(partition).__name__} keeps nothing.")
        spline = RQSpline(bins, bound, min_bin_width, min_bin_height, min_derivative)
        super().__init__(partition.event_shape)
        self.partition, self.spline = partition, spline
        self.net = partition.conditioner(spline.params, hidden, depth, activation, 0)

    def _params(self, v: Tensor) -> Tensor:
        """``[B, *free_shape, 3K - 1]``: the spline parameters of every transformed entry."""
        out = self.partition.restrict(self.net(self.partition.kept(v)))
        free_shape = self.partition.free(v).shape[1:]
        # vectors: output unit i * P + p is parameter p of entry i, a view [B, F, P] with each
        # entry's parameters contiguous (the softmax over them is then fast); images: channel
        # c * P + p, moved to the end
        params = out.reshape(v.shape[0], free_shape[0], self.spline.params, *free_shape[1:])
        return params.movedim(2, -1) if len(free_shape) > 1 else params

    def _transform(self, v: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        free = self.partition.free(v)
        new, ld = self.spline(free, self._params(v), inverse=inverse)
        return self.partition.merge(v, new), sum_except_batch(ld)

    # The spline maps data to latent (as in Durkan et al.): the density direction, which
    # maximum likelihood trains, evaluates the rational function; sampling takes the root.
    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._transform(z, inverse=True)

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._transform(x, inverse=False)


__all__: Sequence[str] = ["rational_quadratic_spline", "spline_knots", "spline_params",
                          "check_spline_settings", "RQSpline", "SplineCoupling"]
