"""Two-dimensional toy data sets, and the exact density and entropy of noisy two moons.

Every sampler has the signature ``sampler(n, generator) -> Tensor [n, 2]`` (float32, CPU) and
draws i.i.d. points, so a training loop can ask for a fresh batch at every step.

Two moons is the lecture's data: the upper half of the unit circle, plus the lower half of the
unit circle shifted by ``(1, 0.5)``, each point picked with probability 1/2, and Gaussian noise
of standard deviation 0.1 added to both coordinates. Because the generating process is known,
its density can be computed (a mixture over the arc angle, integrated numerically) and so can
its entropy ``H = -E[log p(x)]``, the smallest expected negative log-likelihood any model can
reach. ``NLL - H`` is then the KL divergence from the data to the model.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from nfcourse.metrics.stats import mean_se

Sampler = Callable[[int, torch.Generator], Tensor]

MOONS_NOISE = 0.1
# Centres of the two unit half circles; the upper arc has angles in [0, pi] and the lower arc is
# the same arc turned upside down, so a point is centre + sign * (cos t, sin t).
_MOON_CENTRES = ((0.0, 0.0), (1.0, 0.5))
_MOON_SIGNS = (1.0, -1.0)


def _check_n(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"number of samples must be a non-negative int, got {n!r}.")


def _default_generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    if generator is not None and seed is not None:
        raise ValueError("pass either generator= or seed=, not both.")
    if generator is not None:
        return generator
    g = torch.Generator()
    g.manual_seed(0 if seed is None else seed)
    return g


# --------------------------------------------------------------------------- samplers


def two_moons(n: int, generator: torch.Generator | None = None, noise: float = MOONS_NOISE,
              *, grid_angles: bool = False, seed: int | None = None) -> Tensor:
    """Noisy two moons, ``[n, 2]`` float32.

    Args:
        n: number of points; the upper moon gets ``n // 2`` and the lower ``n - n // 2`` (the
            split scikit-learn's ``make_moons`` uses).
        noise: standard deviation of the isotropic Gaussian noise.
        grid_angles: ``False`` (default) draws each angle uniformly in ``[0, pi]``, which gives
            i.i.d. samples of the density :func:`moons_log_prob`. ``True`` spaces the angles
            evenly, as ``make_moons`` does, so that with ``noise=0`` the points are exactly
            ``make_moons(n, shuffle=False, noise=0)`` (useful to check the geometry).
    Returns points ordered upper moon first (not shuffled).
    """
    _check_n(n)
    if noise < 0 or not math.isfinite(noise):
        raise ValueError(f"noise must be a finite standard deviation >= 0, got {noise}.")
    g = _default_generator(generator, seed)
    parts = []
    for count, centre, sign in zip((n // 2, n - n // 2), _MOON_CENTRES, _MOON_SIGNS):
        if grid_angles:
            t = torch.linspace(0, math.pi, count, dtype=torch.float64)
        else:
            t = torch.rand(count, generator=g, dtype=torch.float64) * math.pi
        arc = sign * torch.stack([torch.cos(t), torch.sin(t)], dim=1)
        parts.append(arc + torch.tensor(centre, dtype=torch.float64))
    x = torch.cat(parts)
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=g, dtype=torch.float64)
    return x.float()


def eight_gaussians(n: int, generator: torch.Generator | None = None, *, radius: float = 2.0,
                    std: float = 0.1, seed: int | None = None) -> Tensor:
    """Eight Gaussians (std ``std``) evenly spaced on a circle of radius ``radius``: ``[n, 2]``."""
    _check_n(n)
    g = _default_generator(generator, seed)
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k.double() * (2 * math.pi / 8)
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return (centres + std * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def checkerboard(n: int, generator: torch.Generator | None = None, *, size: int = 4,
                 seed: int | None = None) -> Tensor:
    """Uniform on the dark squares of a ``size x size`` checkerboard over ``[-2, 2]^2``."""
    _check_n(n)
    g = _default_generator(generator, seed)
    cells = [(i, j) for i in range(size) for j in range(size) if (i + j) % 2 == 0]
    idx = torch.randint(0, len(cells), (n,), generator=g)
    corner = torch.tensor(cells, dtype=torch.float64)[idx]
    side = 4.0 / size
    return (-2.0 + side * (corner + torch.rand(n, 2, generator=g, dtype=torch.float64))).float()


def pinwheel(n: int, generator: torch.Generator | None = None, *, arms: int = 5,
             radial_std: float = 0.3, tangential_std: float = 0.1, rate: float = 0.25,
             seed: int | None = None) -> Tensor:
    """Pinwheel: ``arms`` elongated Gaussian blobs, each bent by an angle growing with radius."""
    _check_n(n)
    g = _default_generator(generator, seed)
    arm = torch.randint(0, arms, (n,), generator=g).double()
    pts = torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.tensor(
        [radial_std, tangential_std], dtype=torch.float64)
    pts[:, 0] += 1.0
    angle = arm * (2 * math.pi / arms) + rate * torch.exp(pts[:, 0])
    c, s = torch.cos(angle), torch.sin(angle)
    x = torch.stack([c * pts[:, 0] - s * pts[:, 1], s * pts[:, 0] + c * pts[:, 1]], dim=1)
    return (2.0 * x).float()


def spirals(n: int, generator: torch.Generator | None = None, *, noise: float = 0.1,
            turns: float = 1.5, seed: int | None = None) -> Tensor:
    """Two interleaved Archimedean spirals, radius up to about 3, with Gaussian noise."""
    _check_n(n)
    g = _default_generator(generator, seed)
    # sqrt of a uniform spreads points evenly along the spiral's length rather than its angle
    u = torch.sqrt(torch.rand(n, generator=g, dtype=torch.float64))
    theta = u * turns * 2 * math.pi
    r = 3.0 * u
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    x = sign[:, None] * torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)
    return (x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def rings(n: int, generator: torch.Generator | None = None, *, radii: tuple[float, ...] = (
        0.75, 1.5, 2.25), noise: float = 0.08, seed: int | None = None) -> Tensor:
    """Concentric rings, points spread in proportion to each ring's circumference."""
    _check_n(n)
    g = _default_generator(generator, seed)
    r = torch.tensor(radii, dtype=torch.float64)
    ring = torch.multinomial(r / r.sum(), n, replacement=True, generator=g) if n else \
        torch.zeros(0, dtype=torch.long)
    theta = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    x = r[ring][:, None] * torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    return (x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


DATASETS_2D: dict[str, Sampler] = {
    "moons": two_moons,
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "pinwheel": pinwheel,
    "spirals": spirals,
    "rings": rings,
}


def get_sampler(name: str) -> Sampler:
    """The sampler registered as ``name``; a ``KeyError``-free lookup with a helpful message."""
    try:
        return DATASETS_2D[name]
    except KeyError:
        raise ValueError(f"unknown 2-D data set {name!r}; choose one of "
                         f"{', '.join(sorted(DATASETS_2D))}.") from None


def make_2d(name: str, n: int, generator: torch.Generator | None = None,
            seed: int | None = None) -> Tensor:
    """``n`` i.i.d. points ``[n, 2]`` from the registered data set ``name``.

    Pass a ``generator`` (advanced in place) or a ``seed`` (a fresh generator); neither means
    seed 0, so two calls without either return the same points.
    """
    return get_sampler(name)(n, _default_generator(generator, seed))


# --------------------------------------------------------------------------- exact density

# Composite Gauss-Legendre rule over the arc angle [0, pi]: 16 panels of 16 nodes. A point at
# distance rho from a circle's centre sees a bump of width about noise / rho in the angle; for
# noise 0.1 and rho < 4 that is >= 0.025 rad against panels of 0.2 rad, which a 16-node rule
# integrates to ~1e-12 (tests compare against a rule with 16x as many nodes).
_PANELS, _NODES = 16, 16


@functools.lru_cache(maxsize=8)
def _angle_rule(panels: int, nodes: int) -> tuple[Tensor, Tensor]:
    """Nodes ``[panels*nodes]`` in ``[0, pi]`` and the logs of their weights (which sum to pi)."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    edges = np.linspace(0.0, math.pi, panels + 1)
    half = 0.5 * np.diff(edges)[:, None]
    t = (edges[:-1, None] + half * (x[None, :] + 1)).ravel()
    wt = (half * w[None, :]).ravel()
    return torch.from_numpy(t), torch.from_numpy(np.log(wt))


def moons_log_prob(x: Tensor, noise: float = MOONS_NOISE, *, panels: int = _PANELS,
                   nodes: int = _NODES, chunk: int = 4096) -> Tensor:
    """Exact ``log p(x)`` of noisy two moons at points ``x: [B, 2]`` -> ``[B]`` (float64).

    ``p(x) = 1/2 sum_k (1/pi) int_0^pi N(x; c_k + s_k (cos t, sin t), noise^2 I) dt`` over the
    two moons ``k``; the angle integral is done by Gauss-Legendre quadrature in log space
    (log-sum-exp), so points far from the data get an accurate, finite log-density too.
    """
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"moons_log_prob: expected a tensor of shape [B, 2], got "
                         f"{getattr(x, 'shape', type(x).__name__)}.")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("moons_log_prob: x contains NaN or inf; drop those rows first.")
    if not noise > 0:
        raise ValueError(f"moons_log_prob: noise must be > 0 (otherwise there is no density), "
                         f"got {noise}.")
    t, logw = _angle_rule(panels, nodes)
    # the arc points of both moons, [2T] each coordinate, with their log quadrature weights
    mx = torch.cat([c[0] + sg * torch.cos(t) for c, sg in zip(_MOON_CENTRES, _MOON_SIGNS)])
    my = torch.cat([c[1] + sg * torch.sin(t) for c, sg in zip(_MOON_CENTRES, _MOON_SIGNS)])
    logw2 = torch.cat([logw, logw])
    log_norm = -math.log(2 * math.pi * noise**2) - math.log(math.pi) - math.log(2.0)
    xd = x.detach().to(torch.float64, copy=False).cpu()
    out = []
    for part in xd.split(chunk):
        d2 = (part[:, :1] - mx) ** 2 + (part[:, 1:] - my) ** 2          # [b, 2T]
        out.append(torch.logsumexp(logw2 - d2 / (2 * noise**2), dim=1) + log_norm)
    return torch.cat(out) if out else xd.new_zeros(0)


@functools.lru_cache(maxsize=8)
def moons_entropy(noise: float = MOONS_NOISE, spacing: float | None = None,
                  margin: float = 10.0) -> float:
    """Differential entropy ``H = -int p log p`` of noisy two moons, in nats, by grid quadrature.

    The integrand is smooth and decays like a Gaussian, so the plain midpoint rule on a grid of
    ``spacing`` (default ``noise / 4``) over the data's bounding box widened by
    ``margin * noise`` converges far faster than its nominal order: at noise 0.1, spacings
    0.025 and 0.005 agree to ~1e-11. Cached; the first call takes about a second.
    """
    if not noise > 0:
        raise ValueError(f"moons_entropy: noise must be > 0, got {noise}.")
    spacing = noise / 4 if spacing is None else spacing
    pad = margin * noise
    xs = torch.arange(-1.0 - pad, 2.0 + pad, spacing, dtype=torch.float64) + spacing / 2
    ys = torch.arange(-0.5 - pad, 1.0 + pad, spacing, dtype=torch.float64) + spacing / 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    logp = moons_log_prob(pts, noise)
    p = logp.exp()
    return float(-(p * logp).sum() * spacing**2)


def moons_marginal_log_prob(u: Tensor, coord: int = 0, noise: float = MOONS_NOISE) -> Tensor:
    """Exact log-density of one coordinate of noisy two moons: ``u: [B] -> [B]`` (float64).

    The same angle mixture as :func:`moons_log_prob`, with a 1-D Gaussian around the arc's
    ``coord``-th coordinate (``cos t`` for ``coord=0``, ``sin t`` for ``coord=1``).
    """
    if coord not in (0, 1):
        raise ValueError(f"coord must be 0 or 1, got {coord!r}.")
    if not isinstance(u, Tensor) or u.dim() != 1:
        raise ValueError("moons_marginal_log_prob: expected a 1-D tensor of values [B].")
    t, logw = _angle_rule(_PANELS, _NODES)
    arc = torch.cos(t) if coord == 0 else torch.sin(t)
    ud = u.detach().to(torch.float64).cpu()[:, None]
    terms = [logw - (ud - (centre[coord] + sign * arc)) ** 2 / (2 * noise**2)
             for centre, sign in zip(_MOON_CENTRES, _MOON_SIGNS)]
    log_norm = -0.5 * math.log(2 * math.pi * noise**2) - math.log(math.pi) - math.log(2.0)
    return torch.logsumexp(torch.cat(terms, dim=1), dim=1) + log_norm


@functools.lru_cache(maxsize=8)
def moons_marginal_kl_to_standard_normal(coord: int = 0, noise: float = MOONS_NOISE) -> float:
    """``KL(p(x_coord) || N(0, 1))`` in nats, by 1-D quadrature.

    A model whose ``coord``-th coordinate is exactly ``N(0, 1)`` (as with the lecture's split,
    which never transforms ``x_1``) has ``q(x) = N(x_1) q(x_2 | x_1)``; its expected NLL is at
    least ``H + KL(p(x_1) || N(0, 1))``, reached when ``q(x_2 | x_1)`` is perfect. That floor
    is what such a model converges to.
    """
    h = noise / 20
    u = torch.arange(-2.0 - 10 * noise, 2.0 + 10 * noise, h, dtype=torch.float64) + h / 2
    logp = moons_marginal_log_prob(u, coord, noise)
    log_normal = -0.5 * u**2 - 0.5 * math.log(2 * math.pi)
    return float((logp.exp() * (logp - log_normal)).sum() * h)


@functools.lru_cache(maxsize=8)
def moons_lecture_split_floor(noise: float = MOONS_NOISE, spacing: float | None = None) -> float:
    """The lowest expected NLL (nats) on noisy moons of any model of the lecture-split family.

    With the lecture's split every coupling layer keeps ``x_1`` and maps ``x_2`` affinely given
    ``x_1``; a stack of affine maps of ``x_2`` (all conditioned on the same ``x_1``) is one
    affine map, so the model is exactly ``x_1 ~ N(0, 1)``, ``x_2 | x_1 ~ N(mu(x_1),
    sigma(x_1)^2)``. For such a model the expected NLL is smallest when ``mu`` and ``sigma^2``
    are the true conditional mean and variance, which gives

        E[-log N(x_1; 0, 1)] + E_{x_1}[ 1/2 log(2 pi e Var(x_2 | x_1)) ],

    computed here on a grid (spacing default ``noise / 4``) from the exact density.
    """
    if not noise > 0:
        raise ValueError(f"moons_lecture_split_floor: noise must be > 0, got {noise}.")
    h = noise / 4 if spacing is None else spacing
    pad = 10 * noise
    xs = torch.arange(-1.0 - pad, 2.0 + pad, h, dtype=torch.float64) + h / 2
    ys = torch.arange(-0.5 - pad, 1.0 + pad, h, dtype=torch.float64) + h / 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    p = moons_log_prob(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1), noise).exp()
    p = p.reshape(len(ys), len(xs))
    p_x1 = p.sum(0) * h                                          # marginal of x_1 on the grid
    mean = (p * ys[:, None]).sum(0) * h / p_x1
    var = (p * ys[:, None] ** 2).sum(0) * h / p_x1 - mean**2
    per_x1 = 0.5 * xs**2 + 0.5 * math.log(2 * math.pi) + 0.5 * torch.log(2 * math.pi * math.e
                                                                        * var)
    return float((p_x1 * per_x1).sum() * h)


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class DensityScore:
    """A model's fit to a toy data set of known density, measured on ``n`` fresh points (nats).

    ``kl_gap = nll - entropy`` uses the exact entropy, so its standard error is the NLL's.
    ``kl_paired`` estimates the same KL divergence as the mean of ``log p(x) - log q(x)`` over
    the same points; the data's own randomness cancels, so its standard error is much smaller,
    which is what makes small differences between models measurable. ``log_q`` holds the
    model's per-point log-densities, for paired comparisons of two models on the same points.
    """

    n: int
    nll: float
    nll_se: float
    entropy: float
    kl_gap: float
    kl_gap_se: float
    kl_paired: float
    kl_paired_se: float
    log_q: Tensor = field(repr=False, compare=False)

    def __str__(self) -> str:
        return (f"test NLL {self.nll:.4f} ± {self.nll_se:.4f} nats (n={self.n}), "
                f"entropy {self.entropy:.4f}, KL gap {self.kl_gap:.4f} ± {self.kl_gap_se:.4f} "
                f"(paired {self.kl_paired:.4f} ± {self.kl_paired_se:.4f})")


def _check_test_size(who: str, n: int) -> None:
    if n < 20_000:
        raise ValueError(f"{who}: use at least 20,000 test points (got n={n}); fewer "
                         "leave a standard error too large to compare with the entropy.")


def _score(who: str, log_prob: Callable[[Tensor], Tensor], x: Tensor, log_p: Tensor,
           entropy: float, batch: int) -> DensityScore:
    """Score ``log_prob`` on the test points ``x`` whose true log-densities are ``log_p``."""
    n = len(x)
    q = torch.cat([log_prob(part).detach().double().cpu() for part in x.split(batch)])
    if q.shape != (n,):
        raise ValueError(f"{who}: log_prob returned shape {list(q.shape)}, expected [n]"
                         f" = [{n}]; it must give one log-density per point.")
    if not bool(torch.isfinite(q).all()):
        raise ValueError(f"{who}: the model's log-density is not finite on some test "
                         "points; the model has diverged, retrain it with a lower learning rate.")
    nll, nll_se = mean_se(-q)
    kl, kl_se = mean_se(log_p - q)
    return DensityScore(n=n, nll=nll, nll_se=nll_se, entropy=entropy, kl_gap=nll - entropy,
                        kl_gap_se=nll_se, kl_paired=kl, kl_paired_se=kl_se, log_q=q)


@torch.no_grad()
def score_on_moons(log_prob: Callable[[Tensor], Tensor], n: int = 20_000, seed: int = 12345,
                   noise: float = MOONS_NOISE, batch: int = 8192) -> DensityScore:
    """Test NLL and KL gap of a density model on ``n`` fresh two-moons points.

    Args:
        log_prob: ``[B, 2] -> [B]`` log-density with all constants (e.g. ``FlowModel.log_prob``);
            it receives float32 CPU tensors, move the model there first.
        n: test-set size, at least 20,000 so the standard error is below ~0.01 nats.
        seed: seed of the test sample; fixed by default so numbers are reproducible, and far from
            the small seeds used for training.
    """
    _check_test_size("score_on_moons", n)
    x = two_moons(n, noise=noise, seed=seed)
    return _score("score_on_moons", log_prob, x, moons_log_prob(x, noise),
                  moons_entropy(noise), batch)


@torch.no_grad()
def score_on_checkerboard(log_prob: Callable[[Tensor], Tensor], n: int = 20_000,
                          seed: int = 12345, batch: int = 8192) -> DensityScore:
    """:func:`score_on_moons` for the 4 x 4 :func:`checkerboard`: its density is ``1/8`` on the
    dark squares, so its entropy is exactly ``log 8`` and ``kl_paired`` equals ``kl_gap``."""
    _check_test_size("score_on_checkerboard", n)
    x = checkerboard(n, seed=seed)
    h = math.log(8.0)
    return _score("score_on_checkerboard", log_prob, x, torch.full((n,), -h, dtype=torch.float64),
                  h, batch)
