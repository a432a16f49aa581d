"""Interactive controls for the notebooks (need a live kernel; pages also show static figures)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from nfcourse.flows.simple import Planar
from nfcourse.core.model import FlowModel
from nfcourse.book.plots import plot_density

PLANAR_BOX = (-4.0, 4.0, -4.0, 4.0)


def planar_density_figure(w1: float, w2: float, u1: float, u2: float, b: float, ax=None):
    """Density of ``Planar(w, u, b)`` applied to ``N(0, I)`` in 2-D, on ``[-4, 4]^2``.

    ``u`` is the raw parameter; the title shows the ``u_hat`` the flow uses (``u`` moved along
    ``w`` so that ``w . u_hat > -1``), next to ``w`` and ``b``.
    """
    flow = Planar.from_values([w1, w2], [u1, u2], b)
    with torch.no_grad():
        h1, h2 = flow.u_hat().tolist()
    model = FlowModel(flow)
    ax = plot_density(model.log_prob, ax=ax, box=PLANAR_BOX, n=120,
                      title=f"w=({w1:.1f}, {w2:.1f}), û=({h1:.2f}, {h2:.2f}), b={b:.1f}")
    ax.title.set_fontsize(10)
    return ax


def planar_explorer():
    """Sliders for the five parameters of a 2-D planar flow, redrawing its density."""
    import ipywidgets as widgets

    def draw(w1: float, w2: float, u1: float, u2: float, b: float) -> None:
        fig, ax = plt.subplots(figsize=(5, 4))
        planar_density_figure(w1, w2, u1, u2, b, ax=ax)
        plt.show()

    slider = dict(min=-4.0, max=4.0, step=0.1, continuous_update=False)
    return widgets.interactive(
        draw,
        w1=widgets.FloatSlider(value=3.0, **slider), w2=widgets.FloatSlider(value=0.0, **slider),
        u1=widgets.FloatSlider(value=1.5, **slider), u2=widgets.FloatSlider(value=0.0, **slider),
        b=widgets.FloatSlider(value=0.0, **slider))
