"""Plot helpers shared by the chapters. Each returns the matplotlib ``Axes`` it drew on."""

from __future__ import annotations

import math

from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from torch import Tensor

# The lecture's heat-map window for two moons: x in [-2, 3], y in [-1.5, 2].
MOONS_BOX: tuple[float, float, float, float] = (-2.0, 3.0, -1.5, 2.0)


def grid_2d(box: tuple[float, float, float, float] = MOONS_BOX, n: int = 100,
            dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """An ``n x n`` grid over ``box = (xmin, xmax, ymin, ymax)``.

    Returns ``(xs [n], ys [n], points [n*n, 2])``; ``points`` is row-major in ``y`` then ``x``,
    so ``values.reshape(n, n)`` lines up with ``imshow``/``pcolormesh`` on ``(xs, ys)``.
    """
    xs = torch.linspace(box[0], box[1], n, dtype=dtype)
    ys = torch.linspace(box[2], box[3], n, dtype=dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return xs, ys, torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


@torch.no_grad()
def log_density_grid(log_prob: Callable[[Tensor], Tensor],
                     box: tuple[float, float, float, float] = MOONS_BOX, n: int = 100,
                     device: torch.device | str = "cpu", batch: int = 4096
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluate ``log_prob`` (``[B, 2] -> [B]``, full normalising constants) on a grid.

    Returns ``(xs, ys, logp [n, n])`` as NumPy arrays.
    """
    xs, ys, pts = grid_2d(box, n)
    out = torch.cat([log_prob(chunk.to(device)).cpu() for chunk in pts.split(batch)])
    return xs.numpy(), ys.numpy(), out.reshape(n, n).numpy()


def plot_density(log_prob: Callable[[Tensor], Tensor], ax: Axes | None = None,
                 box: tuple[float, float, float, float] = MOONS_BOX, n: int = 100,
                 log_scale: bool = False, title: str | None = None,
                 device: torch.device | str = "cpu", cmap: str = "viridis") -> Axes:
    """Heat map of ``p(x)`` (or ``log p(x)`` with ``log_scale=True``) over ``box``."""
    ax = ax or plt.gca()
    xs, ys, logp = log_density_grid(log_prob, box, n, device)
    values = logp if log_scale else np.exp(logp)
    mesh = ax.pcolormesh(xs, ys, values, shading="auto", cmap=cmap)
    ax.figure.colorbar(mesh, ax=ax, label="log p(x)" if log_scale else "p(x)")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return ax


def plot_log_densities(log_probs: Sequence[Callable[[Tensor], Tensor]], titles: Sequence[str],
                       axes: Sequence[Axes] | None = None,
                       box: tuple[float, float, float, float] = MOONS_BOX, n: int = 100,
                       floor: float = -10.0, cmap: str = "viridis") -> Sequence[Axes]:
    """Heat maps of ``log p(x)`` for several 2-D densities on one shared colour scale.

    Each ``log_probs[i]`` maps ``[B, 2] -> [B]`` (full normalising constants). The scale runs
    from ``floor`` (nats; lower values get the bottom colour, marked by the colour bar's
    pointed end) to the largest value over all panels, so equal colours mean equal densities
    across panels and the tails, where a model leaks mass, stay visible. One colour bar serves
    all panels. Returns the axes.
    """
    if len(log_probs) != len(titles) or not log_probs:
        raise ValueError("plot_log_densities: need one title per density, and at least one.")
    if axes is None:
        _, axes = plt.subplots(1, len(log_probs), figsize=(4.6 * len(log_probs) + 1, 3.6),
                               squeeze=False, layout="constrained")
        axes = list(axes[0])
    grids = [log_density_grid(lp, box, n) for lp in log_probs]
    top = max(float(np.max(g[2])) for g in grids)
    if not top > floor:
        raise ValueError(f"plot_log_densities: every value is below the floor {floor}.")
    mesh = None
    for ax, (xs, ys, logp), title in zip(axes, grids, titles):
        mesh = ax.pcolormesh(xs, ys, logp, shading="auto", cmap=cmap, vmin=floor, vmax=top)
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        ax.set_aspect("equal")
        ax.set_title(title)
    ax0 = axes[0]
    ax0.figure.colorbar(mesh, ax=list(axes), label="log p(x) (nats)", extend="min")
    return axes


def plot_samples(points: Tensor | np.ndarray, ax: Axes | None = None, label: str | None = None,
                 box: tuple[float, float, float, float] | None = MOONS_BOX, s: float = 2.0,
                 alpha: float = 0.5, color: str | None = None, title: str | None = None) -> Axes:
    """Scatter plot of 2-D points ``[N, 2]``."""
    ax = ax or plt.gca()
    p = points.detach().cpu().numpy() if isinstance(points, Tensor) else np.asarray(points)
    ax.scatter(p[:, 0], p[:, 1], s=s, alpha=alpha, label=label, color=color)
    if box is not None:
        ax.set_xlim(box[0], box[1])
        ax.set_ylim(box[2], box[3])
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    if label:
        ax.legend(loc="upper right", markerscale=4)
    return ax


def plot_hist_vs_density(samples: Tensor | np.ndarray, log_prob: Callable[[Tensor], Tensor],
                         ax: Axes | None = None, bins: int = 80,
                         limits: tuple[float, float] | None = None, title: str | None = None,
                         label: str = "formula", xlabel: str = "x") -> Axes:
    """1-D: a normalised histogram of ``samples [N]`` against the density ``exp(log_prob)``.

    ``log_prob`` takes ``[B, 1]`` and returns ``[B]``.
    """
    ax = ax or plt.gca()
    s = samples.detach().cpu().numpy().reshape(-1) if isinstance(samples, Tensor) \
        else np.asarray(samples).reshape(-1)
    lo, hi = limits if limits is not None else (float(np.quantile(s, 0.001)),
                                                float(np.quantile(s, 0.999)))
    ax.hist(s, bins=bins, range=(lo, hi), density=True, alpha=0.45, label="histogram of samples")
    edges = torch.linspace(lo, hi, 401)
    grid = (0.5 * (edges[1:] + edges[:-1]))[:, None]  # midpoints: open at both ends
    with torch.no_grad():
        dens = log_prob(grid).exp().numpy()
    ax.plot(grid[:, 0].numpy(), dens, lw=2, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend()
    if title:
        ax.set_title(title)
    return ax


def plot_samples_vs_data(samples: Tensor | np.ndarray, data: Tensor | np.ndarray,
                         axes: Sequence[Axes] | None = None,
                         box: tuple[float, float, float, float] | None = MOONS_BOX,
                         titles: tuple[str, str] = ("data", "model samples")) -> Sequence[Axes]:
    """Two scatter plots side by side, same limits: ``data [N, 2]`` and ``samples [M, 2]``."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True, sharey=True)
    plot_samples(data, ax=axes[0], box=box, title=titles[0], color="tab:gray")
    plot_samples(samples, ax=axes[1], box=box, title=titles[1], color="tab:blue")
    return axes


def plot_layers(trajectory: Sequence[Tensor], color_by: Tensor | np.ndarray | None = None,
                max_panels: int = 9, box: tuple[float, float, float, float] | None = None,
                s: float = 2.0, ncols: int | None = None,
                titles: Sequence[str] | None = None, colorbar: bool = False) -> np.ndarray:
    """How points move layer by layer, latent to data.

    ``trajectory`` is the list ``[z, f1(z), f2(f1(z)), ...]`` of ``[N, 2]`` tensors that
    :meth:`nfcourse.core.flow.Compose.trajectory` returns. Each panel shows one stage; points
    keep the colour given by ``color_by [N]`` (default: the angle of ``z``), so one can follow
    where each region of the Gaussian ends up. At most ``max_panels`` stages are shown,
    always including the first and the last. Returns the array of axes.

    By default the panels form one row of small, unlabelled plots. With ``ncols`` they fill a
    grid of that many columns at a readable size, with axis labels on the outer panels;
    ``titles[k]`` (one per stage of ``trajectory``) replaces the default panel title of stage
    ``k``; ``colorbar=True`` adds a colour key (the angle of ``z`` in radians, or the values
    of ``color_by``).
    """
    n_stages = len(trajectory)
    if n_stages < 2:
        raise ValueError("plot_layers: need at least the input and one layer's output.")
    if titles is not None and len(titles) != n_stages:
        raise ValueError(f"plot_layers: {len(titles)} titles for {n_stages} stages.")
    pick = np.unique(np.linspace(0, n_stages - 1, min(max_panels, n_stages)).round().astype(int))
    z0 = trajectory[0].detach().cpu()
    colours = (torch.atan2(z0[:, 1], z0[:, 0]).numpy() if color_by is None else
               (color_by.detach().cpu().numpy() if isinstance(color_by, Tensor)
                else np.asarray(color_by)))
    if ncols is None:
        fig, grid = plt.subplots(1, len(pick), figsize=(2.3 * len(pick), 2.6), sharex=True,
                                 sharey=True, squeeze=False)
        size, labelled = 9, False
    else:
        nrows = math.ceil(len(pick) / ncols)
        fig, grid = plt.subplots(nrows, ncols, figsize=(3.4 * ncols + (1.2 if colorbar else 0),
                                                        3.3 * nrows), sharex=True, sharey=True,
                                 squeeze=False, layout="constrained")
        size, labelled = 11, True
    axes = grid.reshape(-1)
    points = None
    for i, (ax, k) in enumerate(zip(axes, pick)):
        p = trajectory[k].detach().cpu().numpy()
        points = ax.scatter(p[:, 0], p[:, 1], c=colours, s=s, cmap="twilight", alpha=0.7)
        default = "z (base)" if k == 0 else f"after layer {k}"
        ax.set_title(default if titles is None else titles[k], fontsize=size)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7 if not labelled else 9)
        if labelled and i % grid.shape[1] == 0:
            ax.set_ylabel("second coordinate")
        if labelled and i >= len(pick) - grid.shape[1]:
            ax.set_xlabel("first coordinate")
        if box is not None:
            ax.set_xlim(box[0], box[1])
            ax.set_ylim(box[2], box[3])
    for ax in axes[len(pick):]:
        ax.set_visible(False)
    if colorbar and points is not None:
        bar = fig.colorbar(points, ax=list(axes[:len(pick)]), shrink=0.6)
        if color_by is None:
            bar.set_label("angle of z (rad)")
            bar.set_ticks([-math.pi, -math.pi / 2, 0, math.pi / 2, math.pi],
                          labels=["−π", "−π/2", "0", "π/2", "π"])
    if ncols is None:
        fig.tight_layout()
    return axes[:len(pick)] if ncols is not None else grid[0]


def errorbar_intervals(ax: Axes, x: Sequence[float], estimates: Sequence[float],
                       intervals: Sequence[tuple[float, float]], **kwargs: object) -> Axes:
    """Point ``estimates`` at ``x`` with error bars spanning each ``(low, high)`` interval
    (asymmetric, e.g. bootstrap intervals); ``kwargs`` go to ``ax.errorbar``."""
    est = np.asarray(estimates, dtype=float)
    lo, hi = np.asarray(intervals, dtype=float).T
    if np.any(lo > est) or np.any(hi < est):
        raise ValueError("errorbar_intervals: every interval must contain its estimate.")
    kwargs.setdefault("capsize", 3)
    ax.errorbar(x, est, yerr=np.stack([est - lo, hi - est]), **kwargs)  # type: ignore[arg-type]
    return ax


def image_grid(images: Tensor, nrow: int, ax=None, title: str | None = None, pad: int = 1):
    """Tile ``[N, 1, H, W]`` images (uint8 levels or floats in ``[0, 1]``) into one picture."""
    import matplotlib.pyplot as plt

    x = images.detach().cpu().float()
    if not images.is_floating_point():
        x = x / 255
    n, _, h, w = x.shape
    rows = math.ceil(n / nrow)
    canvas = torch.ones(rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, nrow)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h,
               pad + c * (w + pad):pad + c * (w + pad) + w] = x[i, 0]
    ax = ax or plt.gca()
    ax.imshow(canvas.numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax
