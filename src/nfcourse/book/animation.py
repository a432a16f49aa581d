"""Animations that play in the static HTML page: no kernel, no network.

A flow is easiest to understand while it moves: a density pushed layer by layer, or along an
ODE from t = 0 to t = 1. :func:`animate` draws every frame once with matplotlib and returns an
:class:`Animation`, which a notebook displays as a small self-contained player: the frames as
embedded images, a play/pause button, a frame slider, and a caption that states the number of
frames and the player's size. Before any script runs (and in the printed PDF) the player shows
one chosen *still* frame.

Why not ``matplotlib.animation.FuncAnimation.to_jshtml``: its player loads its button icons
from a CDN (so offline its buttons are blank and the page logs a failed request) and shows no
image until its script has run, so a printed page would show nothing.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from nfcourse.book.plots import log_density_grid
from nfcourse.core.flow import Compose
from nfcourse.core.model import FlowModel

__all__ = ["Panel", "Animation", "animate", "layer_stages", "MAX_BYTES"]

#: Largest player accepted by :func:`animate` (its HTML, frames included): records stay lean.
MAX_BYTES = 2_000_000

Box = tuple[float, float, float, float]


def _array(a: Tensor | np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return None
    if isinstance(a, Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


@dataclass(frozen=True, repr=False)
class Panel:
    """One panel of an animation; every field that varies has the frame index first.

    Args:
        title: the panel's title.
        points: ``[T, N, 2]`` point positions in each of the ``T`` frames (a scatter).
        log_density: ``[T, ny, nx]`` log-density on a regular grid over ``box`` per frame, or
            ``[ny, nx]`` for a fixed background; drawn as an image on the animation's one
            shared colour scale.
        contour: ``[ny, nx]`` a fixed log-density over ``box`` drawn as contour lines (the
            target a cloud of points moves towards).
        colors: ``[N]`` a value per point, kept across frames so points can be followed.
        color: the one colour of every point when ``colors`` is not given.
    """

    title: str
    points: Tensor | np.ndarray | None = None
    log_density: Tensor | np.ndarray | None = None
    contour: Tensor | np.ndarray | None = None
    colors: Tensor | np.ndarray | None = None
    color: str = "tab:orange"

    def frames(self) -> int | None:
        """The number of frames this panel has, ``None`` when it does not move."""
        counts = []
        if self.points is not None:
            counts.append(np.shape(self.points)[0])
        if self.log_density is not None and np.ndim(self.log_density) == 3:
            counts.append(np.shape(self.log_density)[0])
        if len(set(counts)) > 1:
            raise ValueError(f"Panel {self.title!r}: points have {counts[0]} frames but "
                             f"log_density has {counts[1]}; give both the same frame count.")
        return counts[0] if counts else None


@dataclass(frozen=True, repr=False)
class Animation:
    """Rendered frames and how to play them; displays as an HTML player in a notebook.

    ``frames`` are encoded images (``mime``), ``labels[k]`` names frame ``k`` (shown beside
    the slider), ``still`` is the frame shown before playing and in print.
    """

    frames: tuple[bytes, ...]
    labels: tuple[str, ...]
    still: int
    fps: float
    mime: str
    width: int
    height: int
    alt: str

    @property
    def key(self) -> str:
        """A stable id for the player's HTML element (a hash of the frames)."""
        digest = hashlib.sha1()
        for frame in self.frames:
            digest.update(frame)
        return "nf-anim-" + digest.hexdigest()[:12]

    def _uri(self, k: int) -> str:
        return f"data:{self.mime};base64," + base64.b64encode(self.frames[k]).decode("ascii")

    def html(self, caption: str | None = None) -> str:
        """The player: still frame, controls, caption (frame count and size), script."""
        data = json.dumps({"frames": [self._uri(k) for k in range(len(self.frames))],
                           "labels": list(self.labels), "fps": self.fps})
        data = data.replace("<", "\\u003c")  # no "</script>" can end the data block early
        body = _PLAYER.format(
            key=self.key, still_uri=self._uri(self.still), alt=html.escape(self.alt),
            width=self.width, height=self.height, last=len(self.frames) - 1, still=self.still,
            label=html.escape(self.labels[self.still]), data=data, caption="{caption}")
        size_kb = (len(body) + 200) / 1000  # the caption's own ~200 characters included
        text = caption or (f"{len(self.frames)} frames, {size_kb:,.0f} kB. Still frame (shown "
                           f"before playing, and in print): {self.labels[self.still]}.")
        return body.replace("{caption}", html.escape(text))

    @property
    def nbytes(self) -> int:
        """Size of the player's HTML in bytes (what the notebook record stores)."""
        return len(self.html().encode("utf-8"))

    def _repr_html_(self) -> str:
        return self.html()

    def __repr__(self) -> str:  # the text/plain form stored beside the HTML: keep it short
        return (f"<Animation: {len(self.frames)} frames of {self.width}x{self.height} px, "
                f"{self.nbytes / 1000:,.0f} kB>")


# A figure with an image, a play/pause button, a slider and a label. The script keeps its
# state on the element (data-frame, data-playing), which is also what the browser check reads.
_PLAYER = """<figure class="nf-animation" id="{key}" data-frame="{still}" data-playing="0">
<style>
.nf-animation {{ margin: 0.5em 0; max-width: 100%; }}
.nf-animation img {{ max-width: 100%; height: auto; display: block; }}
.nf-animation-controls {{ display: flex; gap: 0.6em; align-items: center; margin-top: 0.3em;
  font-size: 0.9em; }}
.nf-animation-controls input[type=range] {{ flex: 1 1 12em; }}
.nf-animation-controls button {{ min-width: 5.5em; cursor: pointer; }}
.nf-animation figcaption {{ font-size: 0.85em; opacity: 0.8; }}
@media print {{ .nf-animation-controls {{ display: none; }} }}
</style>
<img class="nf-animation-frame" src="{still_uri}" alt="{alt}" width="{width}" height="{height}">
<div class="nf-animation-controls">
<button type="button" class="nf-animation-play" aria-label="Play">&#9654; Play</button>
<input type="range" class="nf-animation-slider" min="0" max="{last}" step="1" value="{still}"
 aria-label="Frame">
<span class="nf-animation-label">{label}</span>
</div>
<figcaption>{caption}</figcaption>
<script type="application/json" class="nf-animation-data">{data}</script>
<script>
(function () {{
  var root = document.getElementById("{key}");
  if (!root || root.dataset.ready) return;  // a page that shows the same player twice
  root.dataset.ready = "1";
  var data = JSON.parse(root.querySelector(".nf-animation-data").textContent);
  var img = root.querySelector(".nf-animation-frame");
  var slider = root.querySelector(".nf-animation-slider");
  var label = root.querySelector(".nf-animation-label");
  var button = root.querySelector(".nf-animation-play");
  var n = data.frames.length, timer = null;
  function show(k) {{
    k = ((k % n) + n) % n;
    img.src = data.frames[k]; slider.value = k; label.textContent = data.labels[k];
    root.dataset.frame = String(k);
  }}
  function pause() {{
    if (timer !== null) {{ clearInterval(timer); timer = null; }}
    button.innerHTML = "&#9654; Play"; button.setAttribute("aria-label", "Play");
    root.dataset.playing = "0";
  }}
  function play() {{
    timer = setInterval(function () {{ show(Number(slider.value) + 1); }}, 1000 / data.fps);
    button.innerHTML = "&#10074;&#10074; Pause"; button.setAttribute("aria-label", "Pause");
    root.dataset.playing = "1";
  }}
  button.addEventListener("click", function () {{ if (timer === null) play(); else pause(); }});
  slider.addEventListener("input", function () {{ pause(); show(Number(slider.value)); }});
}})();
</script>
</figure>"""


def _shared_scale(panels: Sequence[Panel], floor: float | None) -> tuple[float, float] | None:
    fields = [_array(p.log_density) for p in panels if p.log_density is not None]
    if not fields:
        return None
    top = max(float(np.nanmax(f)) for f in fields)
    low = min(float(np.nanmin(f)) for f in fields)
    return (max(low, floor) if floor is not None else low), top


def animate(panels: Sequence[Panel], labels: Sequence[str], box: Box, *, still: int = -1,
            fps: float = 4.0, floor: float | None = -8.0, panel_size: float = 3.2,
            dpi: int = 90, image_format: str = "webp", quality: int = 80,
            title: str | None = None, max_bytes: int = MAX_BYTES) -> Animation:
    """Draw ``len(labels)`` frames of side-by-side panels over ``box = (x0, x1, y0, y1)``.

    Densities share one colour scale across panels and frames (log-density in nats, clipped
    below at ``floor`` so that the tails stay visible). ``still`` is the frame shown before
    playing and in print (default: the last). Frames are ``image_format`` images ("webp",
    "png" or "jpeg") at ``dpi``; a player larger than ``max_bytes`` is refused, since it would
    bloat the notebook record: lower ``dpi``, ``quality`` or the frame count.
    """
    n = len(labels)
    counts = {p.title: p.frames() for p in panels}
    wrong = {t: c for t, c in counts.items() if c is not None and c != n}
    if not panels or wrong:
        raise ValueError(f"animate: {n} labels, but panels have frame counts {wrong or counts}; "
                         "give one label per frame.")
    if image_format not in ("webp", "png", "jpeg"):
        raise ValueError(f"animate: image_format={image_format!r}; use webp, png or jpeg.")
    still = still % n
    scale = _shared_scale(panels, floor)
    fig, axes = plt.subplots(1, len(panels), figsize=(panel_size * len(panels) + 1.0,
                                                      panel_size + 0.4),
                             squeeze=False, layout="constrained")
    update = [_draw_panel(ax, p, box, scale) for ax, p in zip(axes[0], panels)]
    if scale is not None:
        shaded = [ax for ax in axes[0] if ax.images]
        fig.colorbar(shaded[0].images[0], ax=shaded, label="log-density (nats)", shrink=0.85,
                     extend="min" if floor is not None else "neither")
    heading = fig.suptitle(f"{title}: {labels[0]}" if title else labels[0], fontsize=11)
    fig.canvas.draw()
    fig.set_layout_engine("none")  # lay out once: every frame then has the same geometry
    frames = []
    for k in range(n):
        for step in update:
            step(k)
        heading.set_text(f"{title}: {labels[k]}" if title else labels[k])
        buffer = io.BytesIO()
        fig.savefig(buffer, format=image_format, dpi=dpi,
                    pil_kwargs=None if image_format == "png" else {"quality": quality})
        frames.append(buffer.getvalue())
    width, height = (int(round(v * dpi)) for v in fig.get_size_inches())
    plt.close(fig)  # the player is the output; no static copy of the last frame
    alt = (title + ": " if title else "") + ", ".join(p.title for p in panels)
    result = Animation(tuple(frames), tuple(labels), still, float(fps),
                       f"image/{image_format}", width, height, alt)
    if result.nbytes > max_bytes:
        raise ValueError(f"animate: the player is {result.nbytes / 1e6:.1f} MB, over the "
                         f"{max_bytes / 1e6:.1f} MB limit; lower dpi, quality or the number "
                         "of frames.")
    return result


def _draw_panel(ax, panel: Panel, box: Box, scale: tuple[float, float] | None):
    """Draw frame 0 of ``panel`` on ``ax``; return a function that shows frame ``k``."""
    ax.set(xlabel="$x_1$", ylabel="$x_2$", xlim=box[:2], ylim=box[2:], aspect="equal")
    ax.set_title(panel.title, fontsize=10)
    ax.grid(False)
    density = _array(panel.log_density)
    image = None
    if density is not None:
        first = density if density.ndim == 2 else density[0]
        image = ax.imshow(first, origin="lower", extent=box, cmap="viridis", aspect="equal",
                          vmin=scale[0], vmax=scale[1], interpolation="bilinear")
    contour = _array(panel.contour)
    if contour is not None:
        ys = np.linspace(box[2], box[3], contour.shape[0])
        xs = np.linspace(box[0], box[1], contour.shape[1])
        peak = contour.max()
        ax.contour(xs, ys, contour, levels=peak + np.log([0.05, 0.2, 0.5, 0.8]),
                   colors="k", linewidths=0.6, linestyles="solid")
    points = _array(panel.points)
    dots = None
    if points is not None:
        colors = _array(panel.colors)
        dots = ax.scatter(points[0, :, 0], points[0, :, 1], s=3, linewidths=0,
                          c=colors if colors is not None else panel.color,
                          cmap="twilight" if colors is not None else None,
                          alpha=0.8 if image is None else 0.9)

    def show(k: int) -> None:
        if image is not None and density.ndim == 3:
            image.set_data(density[k])
        if dots is not None:
            dots.set_offsets(points[k])

    return show


def layer_stages(model: FlowModel, z: Tensor, box: Box, n: int = 100
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Where a stack of layers takes points, and the density it has made, after each layer.

    ``model.flow`` must be a :class:`~nfcourse.core.flow.Compose` of ``K`` layers. Returns
    ``points [K + 1, N, 2]``: ``z [N, 2]`` pushed forward (latent to data) through the first
    ``k`` layers, and ``log_density [K + 1, n, n]``: the exact log-density of the first ``k``
    layers applied to the base distribution, on an ``n x n`` grid over ``box`` (rows are
    ``x_2``). Stage 0 is the base itself.
    """
    if not isinstance(model.flow, Compose):
        raise TypeError(f"layer_stages: model.flow is a {type(model.flow).__name__}; it must "
                        "be a Compose of layers (build the model as FlowModel(Compose(...))).")
    layers = list(model.flow.flows)
    with torch.no_grad():
        points = np.stack([p.cpu().numpy() for p in model.flow.trajectory(z)])
        fields = [log_density_grid(model.base.log_prob, box, n)[2]]
        for k in range(1, len(layers) + 1):
            prefix = FlowModel(Compose(*layers[:k]), model.base)  # shares the layers' weights
            fields.append(log_density_grid(prefix.log_prob, box, n)[2])
    return points, np.stack(fields)
