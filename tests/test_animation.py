"""The animation player: frames, still frame, size limit, and the stages it animates."""

import json
import re

import numpy as np
import pytest
import torch

import nfcourse as nf
from nfcourse.book.animation import Panel, animate, layer_stages
from nfcourse.book.plots import log_density_grid

BOX = (-3.0, 3.0, -3.0, 3.0)


def _moving_points(frames=4, n=50):
    base = np.random.default_rng(0).normal(size=(n, 2))
    return np.stack([base + 0.5 * k for k in range(frames)])


def _player_data(html):
    block = re.search(r'<script type="application/json" class="nf-animation-data">(.*?)</script>',
                      html, flags=re.S)
    return json.loads(block.group(1))


def test_every_frame_is_embedded_and_the_still_is_shown_first():
    points = _moving_points()
    anim = animate([Panel("cloud", points=points)], [f"k={k}" for k in range(4)], BOX, still=1,
                   dpi=40)
    html = anim.html()
    data = _player_data(html)
    assert len(data["frames"]) == 4 and data["labels"] == ["k=0", "k=1", "k=2", "k=3"]
    assert all(f.startswith("data:image/webp;base64,") for f in data["frames"])
    assert len(set(data["frames"])) == 4  # the points move, so every frame differs
    img = re.search(r'<img class="nf-animation-frame" src="([^"]+)"', html).group(1)
    assert img == data["frames"][1]  # the still frame, visible with no script (and in print)
    assert 'value="1"' in html and "4 frames" in html and "kB" in html
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing from the network
    assert anim.nbytes == len(html.encode())
    assert repr(anim).startswith("<Animation: 4 frames")


def test_default_still_is_the_last_frame_and_densities_share_one_scale():
    fields = np.stack([np.full((8, 8), -1.0 - k) for k in range(3)])
    anim = animate([Panel("a", log_density=fields), Panel("b", log_density=fields[0])],
                   ["0", "1", "2"], BOX, dpi=30, floor=None)
    assert anim.still == 2 and anim.labels[anim.still] == "2"


@pytest.mark.parametrize("labels, match", [(["only one"], "one label per frame"),
                                           (["a", "b", "c", "d", "e"], "one label per frame")])
def test_frame_count_mismatch_is_refused(labels, match):
    with pytest.raises(ValueError, match=match):
        animate([Panel("cloud", points=_moving_points())], labels, BOX, dpi=30)


def test_panel_with_inconsistent_frames_is_refused():
    with pytest.raises(ValueError, match="same frame count"):
        Panel("x", points=_moving_points(4), log_density=np.zeros((3, 5, 5))).frames()


def test_oversized_player_is_refused():
    with pytest.raises(ValueError, match="over the .* limit; lower dpi"):
        animate([Panel("cloud", points=_moving_points())], list("abcd"), BOX, dpi=30,
                max_bytes=1000)


def test_layer_stages_are_the_prefix_flows():
    g = torch.Generator().manual_seed(0)
    model = nf.FlowModel(nf.Compose(*[nf.Planar(2, generator=g) for _ in range(3)]))
    z = torch.randn(20, 2, generator=g)
    points, fields = layer_stages(model, z, BOX, n=30)
    assert points.shape == (4, 20, 2) and fields.shape == (4, 30, 30)
    np.testing.assert_allclose(points[0], z.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(points[-1], model.flow.forward(z)[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(fields[0], log_density_grid(model.base.log_prob, BOX, 30)[2],
                                   atol=1e-6)
        np.testing.assert_allclose(fields[-1], log_density_grid(model.log_prob, BOX, 30)[2],
                                   atol=1e-5)
        one = nf.FlowModel(nf.Compose(model.flow.flows[0]))
        np.testing.assert_allclose(fields[1], log_density_grid(one.log_prob, BOX, 30)[2],
                                   atol=1e-5)


def test_layer_stages_needs_a_compose():
    model = nf.FlowModel(nf.Planar(2))
    with pytest.raises(TypeError, match="must be a Compose"):
        layer_stages(model, torch.zeros(3, 2), BOX)
