"""Glow: ActNorm, invertible 1x1 convolutions (dense and LU), squeeze, split, multi-scale."""

import math

import pytest
import torch

from nfcourse import check_flow
from nfcourse.flows.coupling import AffineCoupling, ChannelSplit
from nfcourse.flows.glow import (ActNorm, GlowLevel, GlowStep,
                                 InvertibleConv1x1, InvertibleLinear, Split, initialize_actnorms,
                                 squeeze2d, unsqueeze2d)
from nfcourse.models import glow, glow_2d


def _randomise(module: torch.nn.Module, gen: torch.Generator, scale: float = 0.3) -> None:
    """Perturb every parameter (zero-initialised nets would otherwise make layers trivial)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def _lu_and_dense_twins(shape, gen):
    """An LU mixer with random factors, and a dense mixer holding the same matrix W (float64)."""
    make = InvertibleLinear if len(shape) == 1 else InvertibleConv1x1
    lu = make(shape[0] if len(shape) == 1 else shape, lu=True).double()
    _randomise(lu, gen)
    dense = make(shape[0] if len(shape) == 1 else shape, lu=False).double()
    with torch.no_grad():
        dense.weight.copy_(lu.weight_matrix())
    return lu, dense


# ----------------------------------------------------------------------------- 1x1 / linear


@pytest.mark.parametrize("shape", [(2,), (5,), (3, 4, 4), (8, 2, 2)])
def test_lu_and_dense_agree_on_logdet_and_inverse(shape, gen):
    lu, dense = _lu_and_dense_twins(shape, gen)   # float64 twins
    # log|det W|: a sum of log|diag U| against slogdet of the same matrix
    torch.testing.assert_close(lu.log_abs_det(), torch.linalg.slogdet(dense.weight)[1])
    torch.testing.assert_close(lu.log_abs_det(), dense.log_abs_det())
    # W^-1 by two triangular solves against a dense inverse
    torch.testing.assert_close(lu.inverse_matrix(), torch.linalg.inv(dense.weight))
    x = torch.randn(6, *shape, generator=gen, dtype=torch.float64)
    for a, b in zip(lu.inverse(x), dense.inverse(x)):
        torch.testing.assert_close(a, b)
    for a, b in zip(lu.forward(x), dense.forward(x)):
        torch.testing.assert_close(a, b)


def test_lu_and_dense_start_from_the_same_rotation():
    a = InvertibleLinear(6, lu=True, generator=torch.Generator().manual_seed(3))
    b = InvertibleLinear(6, lu=False, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.weight_matrix(), b.weight_matrix())
    w = b.weight_matrix().double()
    torch.testing.assert_close(w @ w.T, torch.eye(6, dtype=torch.float64), atol=1e-6, rtol=0)
    assert abs(float(a.log_abs_det().detach())) < 1e-5   # orthogonal: the layer starts volume preserving


def test_lu_structure_survives_arbitrary_parameter_values(gen):
    """Optimiser steps touch every entry of the stored factors, including the ones above the
    diagonal of L; the masks must keep W = P L U with the log-det given by the diagonal."""
    layer = InvertibleLinear(5, lu=True).double()
    with torch.no_grad():
        layer.lower.copy_(torch.randn(5, 5, generator=gen, dtype=torch.float64))
        layer.upper.copy_(torch.randn(5, 5, generator=gen, dtype=torch.float64))
    w = layer.weight_matrix()
    torch.testing.assert_close(layer.log_abs_det(), torch.linalg.slogdet(w)[1])


@pytest.mark.parametrize("lu", [True, False])
def test_mixers_pass_check_flow(lu, gen):
    for layer, z in [(InvertibleLinear(2, lu), torch.randn(5, 2, generator=gen)),
                     (InvertibleLinear(7, lu), torch.randn(4, 7, generator=gen)),
                     (InvertibleConv1x1((4, 3, 2), lu), torch.randn(3, 4, 3, 2, generator=gen))]:
        _randomise(layer, gen)
        check_flow(layer, z)


def test_conv1x1_logdet_counts_every_pixel(gen):
    layer = InvertibleConv1x1((3, 4, 5))
    _randomise(layer, gen)
    x = torch.randn(2, 3, 4, 5, generator=gen)
    z, ld = layer.inverse(x)                     # data -> latent applies W at every pixel
    torch.testing.assert_close(ld, (20 * layer.log_abs_det()).expand(2))
    torch.testing.assert_close(z[:, :, 1, 2], x[:, :, 1, 2] @ layer.weight_matrix().T)
    _, ld_fwd = layer(z)
    torch.testing.assert_close(ld_fwd, -ld)


# ----------------------------------------------------------------------------- ActNorm


@pytest.mark.parametrize("shape", [(3,), (2, 4, 4)])
def test_actnorm_initialises_once_from_the_first_training_batch(shape, gen):
    layer = ActNorm(shape)
    assert not bool(layer.initialized)
    x = 3.0 + 2.5 * torch.randn(512, *shape, generator=gen)
    z, _ = layer.inverse(x)
    assert bool(layer.initialized)
    per_channel = z.transpose(0, 1).reshape(shape[0], -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(shape[0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_channel.std(1), torch.ones(shape[0]), atol=1e-4, rtol=0)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.inverse(-10.0 + 0.1 * torch.randn(64, *shape, generator=gen))   # a very different batch
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed on the second batch"


def test_actnorm_does_not_initialise_in_eval_mode(gen):
    layer = ActNorm((3,)).eval()
    x = 5 + torch.randn(16, 3, generator=gen)
    z, ld = layer.inverse(x)
    assert not bool(layer.initialized)
    assert torch.equal(z, x) and torch.equal(ld, torch.zeros(16))


def test_initialised_flag_is_in_the_state_dict():
    sd = ActNorm((4,)).state_dict()
    assert "initialized" in sd and sd["initialized"].dtype == torch.bool


def test_loaded_model_is_never_reinitialised(tmp_path, gen):
    """Save a trained-looking Glow, load it into a fresh one, feed it new data in training mode:
    nothing may change. The control (no load) shows that the same data *would* initialise."""
    torch.manual_seed(0)
    trained = glow((1, 8, 8), levels=2, steps=2, hidden=8)
    initialize_actnorms(trained, torch.rand(128, 1, 8, 8, generator=gen) - 0.5)
    _randomise(trained, gen, 0.05)                 # "training" moved the ActNorm parameters
    path = tmp_path / "glow.pt"
    torch.save(trained.state_dict(), path)

    new_data = 4.0 + 3.0 * torch.randn(64, 1, 8, 8, generator=gen)
    probe = torch.rand(8, 1, 8, 8, generator=gen) - 0.5
    with torch.no_grad():
        expected = trained.eval().log_prob(probe)

    torch.manual_seed(1)
    loaded = glow((1, 8, 8), levels=2, steps=2, hidden=8)
    loaded.load_state_dict(torch.load(path, weights_only=True))
    control = glow((1, 8, 8), levels=2, steps=2, hidden=8)
    control.load_state_dict(torch.load(path, weights_only=True))
    for a in control.modules():                    # what a Python-attribute flag would be
        if isinstance(a, ActNorm):
            a.initialized.fill_(False)
    for model in (loaded, control):
        model.train()
        with torch.no_grad():
            model.log_prob(new_data)
        model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob(probe), expected)
        assert (control.log_prob(probe) - expected).abs().max() > 1.0


def test_check_flow_sees_an_uninitialised_actnorm_as_batch_dependent(gen):
    """check_flow's first inverse call would initialise it from that batch, so forward and
    inverse use different maps: initialise from data first, then check."""
    with pytest.raises(AssertionError, match="round trip"):
        check_flow(ActNorm((3,)), 2 + torch.randn(8, 3, generator=gen))
    layer = ActNorm((3,))
    layer.initialize(2 + torch.randn(8, 3, generator=gen))
    check_flow(layer, torch.randn(8, 3, generator=gen))


@pytest.mark.parametrize("shape", [(2,), (3, 2, 4)])
def test_actnorm_passes_check_flow(shape, gen):
    layer = ActNorm(shape)
    layer.initialize(1 + 2 * torch.randn(32, *shape, generator=gen))
    _randomise(layer, gen)
    check_flow(layer, torch.randn(4, *shape, generator=gen))


def test_glow_step_normalises_raw_data_first(gen):
    """Data -> latent order is ActNorm, 1x1, coupling: ActNorm sees the raw data."""
    step = GlowStep((3,), hidden=8)
    x = 7.0 + 3.0 * torch.randn(256, 3, generator=gen)
    assert initialize_actnorms(step, x) == 1
    actnorm = next(m for m in step.modules() if isinstance(m, ActNorm))
    torch.testing.assert_close(actnorm.bias, x.mean(0))
    assert initialize_actnorms(step, x) == 0      # a second call changes nothing


# ----------------------------------------------------------------------------- squeeze


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (3, 5, 4, 6), (1, 2, 2, 2)])
def test_squeeze_and_unsqueeze_are_exact_inverses(shape, gen):
    x = torch.randn(shape, generator=gen)
    y = squeeze2d(x)
    assert y.shape == (shape[0], 4 * shape[1], shape[2] // 2, shape[3] // 2)
    assert torch.equal(unsqueeze2d(y), x)
    assert torch.equal(squeeze2d(unsqueeze2d(y)), y)


def test_squeeze_layout():
    x = torch.arange(2 * 4 * 4.0).reshape(1, 2, 4, 4)
    y = squeeze2d(x)
    for c in range(2):
        for i in range(2):
            for j in range(2):
                assert torch.equal(y[0, 4 * c + 2 * i + j], x[0, c, i::2, j::2])


def test_squeeze_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible"):
        squeeze2d(torch.zeros(1, 1, 5, 4))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        squeeze2d(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="divisible"):
        unsqueeze2d(torch.zeros(1, 3, 2, 2))


# ----------------------------------------------------------------------------- couplings


@pytest.mark.parametrize("shape", [(2, 3, 3), (5, 2, 4)])
def test_conv_coupling_and_split_pass_check_flow(shape, gen):
    for layer in (AffineCoupling(ChannelSplit(shape), hidden=6), Split(shape)):
        _randomise(layer, gen)
        check_flow(layer, torch.randn(3, *shape, generator=gen))


def test_new_couplings_and_split_are_the_identity(gen):
    z = torch.randn(2, 4, 2, 2, generator=gen)
    for layer in (AffineCoupling(ChannelSplit((4, 2, 2)), hidden=4), Split((4, 2, 2))):
        x, ld = layer(z)
        assert torch.equal(x, z) and torch.equal(ld, torch.zeros(2))


@pytest.mark.parametrize("shape", [(2,), (4,), (4, 2, 2)])
def test_glow_steps_pass_check_flow(shape, gen):
    step = GlowStep(shape, hidden=8)
    initialize_actnorms(step, 1 + 2 * torch.randn(64, *shape, generator=gen))
    _randomise(step, gen)
    check_flow(step, torch.randn(3, *shape, generator=gen))


def test_glow_2d_and_multiscale_pass_check_flow(gen):
    vec = glow_2d(2, steps=4, hidden=8)
    img = glow((1, 8, 8), levels=3, steps=1, hidden=4)
    for model, x in [(vec, torch.randn(64, 2, generator=gen)),
                     (img, torch.rand(64, 1, 8, 8, generator=gen) - 0.5)]:
        assert initialize_actnorms(model, x) > 0
        _randomise(model, gen, 0.1)
        check_flow(model.flow, x[:2])


# ----------------------------------------------------------------------------- multi-scale


def _trained_looking_glow(gen, levels=2):
    torch.manual_seed(0)
    model = glow((1, 8, 8), levels=levels, steps=2, hidden=8)
    initialize_actnorms(model, torch.rand(128, 1, 8, 8, generator=gen) - 0.5)
    _randomise(model, gen, 0.1)
    return model.eval()


def test_multiscale_round_trips_images(gen):
    model = _trained_looking_glow(gen, levels=3)
    x = torch.rand(32, 1, 8, 8, generator=gen) - 0.5
    with torch.no_grad():
        z, ld_inv = model.flow.inverse(x)
        x_back, ld_fwd = model.flow.forward(z)
    assert z.shape == x.shape
    assert (x_back - x).abs().max() < 1e-4
    assert (ld_inv + ld_fwd).abs().max() < 1e-3
    assert model.sample(5, generator=gen).shape == (5, 1, 8, 8)


def test_multiscale_log_prob_is_the_sum_of_its_parts(gen):
    """Recompute log p(x) by hand for a 2-level model, with the factored-out half scored by an
    explicit Normal(mu, sigma) from the split's network, and the top by N(0, I)."""
    model = _trained_looking_glow(gen).double()
    top: GlowLevel = model.flow
    x = torch.rand(5, 1, 8, 8, generator=gen, dtype=torch.float64) - 0.5
    with torch.no_grad():
        y, ld_steps1 = top.steps.inverse(squeeze2d(x))              # [5, 4, 4, 4]
        k = top.split.kept
        s, t = top.split._scale_shift(y, None)
        prior = torch.distributions.Normal(t, s.exp())               # x_b = t + e^s * eps
        log_prior_b = prior.log_prob(y[:, k:]).sum(dim=(1, 2, 3))
        y2, ld_steps2 = top.inner.steps.inverse(squeeze2d(y[:, :k]))  # [5, 8, 2, 2]
        log_top = torch.distributions.Normal(0.0, 1.0).log_prob(y2).sum(dim=(1, 2, 3))
        by_hand = ld_steps1 + log_prior_b + ld_steps2 + log_top
        torch.testing.assert_close(model.log_prob(x), by_hand)
        assert (log_prior_b - torch.distributions.Normal(0.0, 1.0).log_prob(
            y[:, k:]).sum(dim=(1, 2, 3))).abs().max() > 1e-3    # the prior is really learned


def test_multiscale_levels_and_shapes():
    model = glow((2, 8, 8), levels=3, steps=1, hidden=4)
    shapes = [lvl.steps.event_shape for lvl in model.flow.levels()]
    assert shapes == [(8, 4, 4), (16, 2, 2), (32, 1, 1)]


# ----------------------------------------------------------------------------- bad input


def test_bad_input_errors_name_the_problem():
    with pytest.raises(ValueError, match="divisible by 8"):
        glow((1, 8, 12), levels=3)
    with pytest.raises(ValueError, match="glow_2d"):
        glow((4,))
    with pytest.raises(ValueError, match="InvertibleLinear"):
        InvertibleConv1x1((4,))
    with pytest.raises(ValueError, match="at least 2 channels"):
        ChannelSplit((1, 4, 4))
    with pytest.raises(ValueError, match="event_shape"):
        ActNorm((3, 4))
    with pytest.raises(ValueError, match="at least 2 values"):
        ActNorm((3,)).initialize(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="positive int"):
        InvertibleLinear(0)
    with pytest.raises(ValueError, match=r"expected shape \[B, 1, 8, 8\]"):
        glow((1, 8, 8), levels=2, steps=1, hidden=4).log_prob(torch.zeros(2, 64))
    with pytest.raises(ValueError, match="non-finite"):
        glow_2d(2, 2, 4).log_prob(torch.tensor([[math.nan, 0.0]]))
    with pytest.raises(TypeError, match="Flow or a FlowModel"):
        initialize_actnorms(torch.nn.Linear(2, 2), torch.zeros(4, 2))
