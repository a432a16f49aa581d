"""Coupling layers (NICE, RealNVP): exact bijections, correct log-dets, masks that alternate."""

import math

import pytest
import torch

from nfcourse import check_flow
from nfcourse.core import Compose
from nfcourse.flows import (AdditiveCoupling, AffineCoupling, DiagonalScaling, coupling_masks,
                            never_transformed)
from nfcourse.models import nice, realnvp
from nfcourse.flows.coupling import MASK_KINDS, soft_clamp


def _randomise(module: torch.nn.Module, gen: torch.Generator, scale: float = 0.5) -> None:
    """Random parameters everywhere, including the zero-initialised last layers."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("features", [2, 3, 5])
def test_masks_keep_and_transform_something_every_layer(kind, features):
    masks = coupling_masks(features, 4, kind)
    assert len(masks) == 4
    for m in masks:
        assert m.shape == (features,) and m.dtype == torch.bool
        assert 0 < int(m.sum()) < features


@pytest.mark.parametrize("features", [2, 3, 4, 5, 6])
def test_alternating_masks_transform_every_coordinate(features):
    for kind in ("halves", "parity"):
        assert never_transformed(coupling_masks(features, 2, kind)) == []


def test_lecture_split_never_transforms_the_first_coordinates():
    for d in (2, 3, 4, 5, 6):
        masks = coupling_masks(d, 8, "lecture")
        # for odd D the two sizes differ, but the first D // 2 coordinates are kept by both
        assert never_transformed(masks) == list(range(d // 2))
    # for even D all layers are the same split: no alternation at all
    assert all(torch.equal(m, coupling_masks(4, 8, "lecture")[0])
               for m in coupling_masks(4, 8, "lecture"))


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("features", [2, 3, 5])
@pytest.mark.parametrize("batch", [1, 4, 9])
def test_affine_and_additive_couplings_pass_check_flow(kind, features, batch, gen):
    for layer_index, mask in enumerate(coupling_masks(features, 2, kind)):
        for layer in (AffineCoupling(mask, hidden=8), AdditiveCoupling(mask, hidden=8)):
            _randomise(layer, gen)
            z = 2 * torch.randn(batch, features, generator=gen)
            result = check_flow(layer, z)
            assert result.roundtrip < 1e-10


def test_the_jacobian_is_triangular_with_exp_s_on_the_diagonal(gen):
    mask = torch.tensor([True, False, True, False])
    layer = AffineCoupling(mask, hidden=8).double()
    _randomise(layer, gen)
    z = torch.randn(1, 4, generator=gen, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: layer(v)[0], z)[0, :, 0, :]
    kept, free = mask.nonzero().flatten(), (~mask).nonzero().flatten()
    # kept outputs copy kept inputs: identity rows, zero columns for the transformed inputs
    torch.testing.assert_close(jac[kept][:, kept], torch.eye(2, dtype=torch.float64))
    assert float(jac[kept][:, free].abs().max()) == 0.0
    # each transformed output depends on its own input only, through exp(s)
    block = jac[free][:, free]
    assert float((block - torch.diag(torch.diagonal(block))).abs().max()) == 0.0
    s, _ = layer._scale_shift(z)
    torch.testing.assert_close(torch.diagonal(block), s[0, free].exp())


def test_new_flows_are_the_identity():
    z = torch.randn(16, 2)
    for model in (realnvp(2, 4, 16), nice(2, 4, 16)):
        with torch.no_grad():
            x, logdet = model.flow(z)
        assert torch.equal(x, z)
        assert float(logdet.abs().max()) == 0.0


@pytest.mark.parametrize("build", [realnvp, nice])
@pytest.mark.parametrize("masks", MASK_KINDS)
def test_whole_models_pass_check_flow(build, masks, gen):
    model = build(3, 6, 8, masks=masks)
    _randomise(model, gen, 0.3)
    check_flow(model.flow, torch.randn(5, 3, generator=gen))


def test_diagonal_scaling_passes_check_flow(gen):
    layer = DiagonalScaling(3)
    _randomise(layer, gen)
    check_flow(layer, torch.randn(4, 3, generator=gen))


def test_log_scale_is_bounded_even_for_wild_weights(gen):
    layer = AffineCoupling(torch.tensor([True, False]), hidden=8, scale_bound=2.0)
    _randomise(layer, gen, scale=100.0)
    z = 100 * torch.randn(256, 2, generator=gen)
    x, logdet = layer(z)
    assert bool(torch.isfinite(x).all())
    assert float(logdet.detach().abs().max()) <= 2.0  # tanh may round to exactly 1 in float32
    assert torch.equal(x[:, 0], z[:, 0])
    s = torch.linspace(-50, 50, 101)
    assert float(soft_clamp(s, 3.0).abs().max()) <= 3.0
    torch.testing.assert_close(soft_clamp(torch.tensor([1e-4]), 3.0), torch.tensor([1e-4]))


def test_lecture_split_leaves_the_first_coordinate_alone(gen):
    bad, good = realnvp(2, 8, 8, masks="lecture"), realnvp(2, 8, 8)
    _randomise(bad, gen)
    _randomise(good, gen)
    z = torch.randn(64, 2, generator=gen)
    assert torch.equal(bad.flow(z)[0][:, 0], z[:, 0])
    assert not torch.allclose(good.flow(z)[0][:, 0], z[:, 0])


def test_a_random_realnvp_density_integrates_to_one(gen):
    model = realnvp(2, 4, 8).double()
    _randomise(model, gen, 0.3)
    h, lim = 0.04, 9.0
    xs = torch.arange(-lim, lim, h, dtype=torch.float64) + h / 2
    yy, xx = torch.meshgrid(xs, xs, indexing="ij")
    with torch.no_grad():
        p = model.log_prob(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)).exp()
    assert abs(float(p.sum()) * h * h - 1) < 2e-3


def test_nice_has_no_volume_change_except_in_its_scaling_layer(gen):
    model = nice(2, 4, 8)
    _randomise(model, gen)
    z = torch.randn(10, 2, generator=gen)
    _, logdet = model.flow(z)
    scale = model.flow[0]
    assert isinstance(scale, DiagonalScaling)
    torch.testing.assert_close(logdet, scale.log_scale.sum().expand(10))


def test_bad_construction_and_inputs_raise_with_the_fix():
    with pytest.raises(ValueError, match="at least 2 features"):
        coupling_masks(1, 4)
    with pytest.raises(ValueError, match="unknown mask kind 'checker'"):
        coupling_masks(2, 4, "checker")
    with pytest.raises(ValueError, match="layers must be >= 1"):
        coupling_masks(2, 0)
    with pytest.raises(ValueError, match="keep at least one"):
        AffineCoupling(torch.tensor([True, True]))
    with pytest.raises(ValueError, match="1-D bool tensor"):
        AffineCoupling(torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="scale_bound must be > 0"):
        AffineCoupling(torch.tensor([True, False]), scale_bound=0.0)
    model = realnvp(2, 2, 8)
    with pytest.raises(ValueError, match=r"expected shape \[B, 2\]"):
        model.log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="non-finite"):
        model.log_prob(torch.tensor([[0.0, math.nan]]))
    with pytest.raises(TypeError, match="Compose"):
        Compose(model)  # a FlowModel is not a Flow
