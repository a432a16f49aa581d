"""Chapter 1's planar-flow figures name the u_hat the flow uses, not the raw u one sets."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from nfcourse.book.widgets import planar_density_figure  # noqa: E402


def test_planar_figure_title_shows_u_hat() -> None:
    # w = (3, 0), u = (0.5, 0): w.u = 1.5, so w.u_hat = -1 + 1e-3 + softplus(1.5) = 0.7024
    # and u_hat = (0.7024 / 3, 0) = (0.23, 0), less than half of the raw u
    fig, ax = plt.subplots()
    planar_density_figure(3.0, 0.0, 0.5, 0.0, 0.0, ax=ax)
    title = ax.get_title()
    plt.close(fig)
    assert "û=(0.23, 0.00)" in title
    assert "u=(0.5" not in title
