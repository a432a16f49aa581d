"""Coupling layers (NICE, RealNVP): exact bijections, correct log-dets, masks that alternate."""

import math

import pytest
import torch

from nfcourse import check_flow
from nfcourse.core import Compose, Inverse
from nfcourse.flows import (AdditiveCoupling, AffineCoupling, ChannelSplit, Checkerboard,
                            ContextOnly, DiagonalScaling, IndexSplit, coupling_masks,
                            never_transformed)
from nfcourse.models import nice, realnvp
from nfcourse.flows.coupling import MASK_KINDS, checkerboard_mask, soft_clamp


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
    s, _ = layer._scale_shift(z, None)              # s of the transformed coordinates only
    torch.testing.assert_close(torch.diagonal(block), s[0].exp())


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
    with pytest.raises(ValueError, match="given"):
        AffineCoupling(IndexSplit(torch.tensor([True, False])), 8, context=2)(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="context"):
        AffineCoupling(ContextOnly(2))          # keeps nothing and sees nothing: a constant


# ----------------------------------------------------------------------------- partitions


def _masked_reference(layer: AffineCoupling, z: torch.Tensor) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """The masked formulation on ``layer``'s weights: the network sees ``z * mask`` through a
    first layer that is ``D`` wide (zero columns for the transformed inputs) and writes ``s, t``
    for every coordinate, then the mask zeroes them on the kept ones."""
    mask = layer.partition.mask.to(z.dtype)
    kept, free = layer.partition.kept_idx, layer.partition.free_idx
    first, last = layer.net[0], layer.net[-1]
    d, n_free = mask.numel(), free.numel()
    w_in = z.new_zeros(first.out_features, d).index_copy(1, kept, first.weight)
    h = torch.nn.functional.linear(z * mask, w_in, first.bias)
    for module in list(layer.net)[1:-1]:
        h = module(h)
    out = last(h)
    raw_s = z.new_zeros(z.shape[0], d).index_copy(1, free, out[:, :n_free])
    t = z.new_zeros(z.shape[0], d).index_copy(1, free, out[:, n_free:])
    s = soft_clamp(raw_s, layer.scale_bound) * (1 - mask)
    return z * torch.exp(s) + t * (1 - mask), s.sum(dim=1)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("features", [2, 3, 5])
def test_index_split_equals_the_masked_formulation(kind, features, gen):
    for mask in coupling_masks(features, 2, kind):
        layer = AffineCoupling(mask, hidden=8).double()
        _randomise(layer, gen)
        z = torch.randn(6, features, generator=gen, dtype=torch.float64)
        x, logdet = layer(z)
        x_ref, logdet_ref = _masked_reference(layer, z)
        torch.testing.assert_close(x, x_ref)
        torch.testing.assert_close(logdet, logdet_ref)


def _partitions():
    """``(name, partition, points shape, context shape)`` for every partition kind."""
    return [("index", IndexSplit(torch.tensor([True, False, False, True, False])), (5,), (3,)),
            ("checkerboard", Checkerboard((2, 4, 4), 1), (2, 4, 4), (3, 4, 4)),
            ("checkerboard, any size", Checkerboard(2, 0), (2, 2, 4), (3, 2, 4)),
            ("channels", ChannelSplit((3, 2, 2)), (3, 2, 2), (2, 2, 2)),
            ("context only", ContextOnly(2), (2, 3, 3), (1, 3, 3))]


# every partition with and without a context, except "context only" without one (a constant)
CASES = [(case, with_context) for case, (_, partition, _, _) in enumerate(_partitions())
         for with_context in (False, True) if with_context or not partition.keeps_nothing]


@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("case, with_context", CASES)
def test_every_partition_passes_check_flow_also_inverted(case, with_context, scale, gen):
    name, partition, shape, context_shape = _partitions()[case]
    context = context_shape[0] if with_context else 0
    layer = AffineCoupling(partition, hidden=6, context=context, scale=scale)
    _randomise(layer, gen)
    flow = layer.given(torch.randn(3, *context_shape, generator=gen)) if context else layer
    for f in (flow, Inverse(flow)):
        check_flow(f, torch.randn(3, *shape, generator=gen))
    # the kept entries pass unchanged, and with the scale off nothing changes volume
    z = torch.randn(3, *shape, generator=gen)
    x, logdet = flow(z)
    torch.testing.assert_close(partition.kept(x), partition.kept(z), rtol=0, atol=0)
    if not scale:
        assert torch.equal(logdet, torch.zeros(3))


def test_new_couplings_are_the_identity_for_every_partition(gen):
    for name, partition, shape, context_shape in _partitions():
        layer = AffineCoupling(partition, hidden=6, context=context_shape[0])
        z = torch.randn(2, *shape, generator=gen)
        x, logdet = layer.given(torch.randn(2, *context_shape, generator=gen))(z)
        assert torch.equal(x, z) and torch.equal(logdet, torch.zeros(2)), name


def test_checkerboard_keeps_one_colour_and_context_changes_the_map(gen):
    layer = AffineCoupling(Checkerboard((1, 4, 4), 0), hidden=6, context=1)
    _randomise(layer, gen)
    z = torch.randn(2, 1, 4, 4, generator=gen)
    a = layer.given(torch.zeros(2, 1, 4, 4))(z)[0]
    b = layer.given(torch.ones(2, 1, 4, 4))(z)[0]
    keep = checkerboard_mask((4, 4), 0).bool().expand(2, 1, 4, 4)
    assert torch.equal(a[keep], z[keep]) and torch.equal(b[keep], z[keep])
    assert not torch.allclose(a[~keep], b[~keep])


def test_mlp_relu_is_in_place_only_without_autograd():
    from nfcourse.nn import ReLU, mlp

    net = mlp(3, 2, 8)
    assert sum(isinstance(m, ReLU) for m in net) == 2
    x = torch.randn(5, 8)
    with torch.no_grad():
        y = x.clone()
        out = ReLU()(y)
        assert out.data_ptr() == y.data_ptr() and torch.equal(out, torch.relu(x))
    y = x.clone().requires_grad_(True)
    out = ReLU()(y)
    assert out.data_ptr() != y.data_ptr()
    out.sum().backward()
    assert torch.equal(y.grad, (x > 0).float())
