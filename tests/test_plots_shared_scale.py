"""Chapter 2's figure helpers: shared log-density scale, and the labelled layer grid."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from nfcourse.book.plots import plot_layers, plot_log_densities  # noqa: E402


def _gauss(scale: float):
    def log_prob(x: torch.Tensor) -> torch.Tensor:
        return (-0.5 * (x / scale) ** 2).sum(1) - 2 * math.log(scale) - math.log(2 * math.pi)
    return log_prob


def test_log_densities_share_one_scale_from_floor_to_the_highest_peak() -> None:
    axes = plot_log_densities([_gauss(1.0), _gauss(0.5)], ["wide", "narrow"], n=41, floor=-8.0)
    limits = {ax.collections[0].get_clim() for ax in axes}
    plt.close("all")
    assert len(limits) == 1                       # one scale for both panels
    low, high = limits.pop()
    assert low == -8.0
    # the narrow Gaussian's peak, log(1 / (2 pi 0.25)), sets the top (grid contains 0)
    assert abs(high - math.log(1 / (2 * math.pi * 0.25))) < 1e-3   # float32 grid


def test_layer_grid_labels_panels_and_keeps_the_default_strip() -> None:
    traj = [torch.randn(50, 2) for _ in range(9)]
    titles = ["z"] + [f"layer {k}" for k in range(1, 9)]
    axes = plot_layers(traj, ncols=3, titles=titles, colorbar=True)
    assert [ax.get_title() for ax in axes] == titles
    assert axes[6].get_xlabel() and axes[0].get_ylabel()
    assert len(axes[0].figure.axes) == 10          # nine panels and one colour bar
    strip = plot_layers(traj)                      # default: one row, no colour bar
    assert strip.shape == (9,) and len(strip[0].figure.axes) == 9
    plt.close("all")
