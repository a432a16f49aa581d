"""MNIST loader, dequantisation, the logit transform, bits/dim and the image flows."""

import gzip
import math
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nfcourse import check_flow
from nfcourse.data import mnist as M
from nfcourse.core.distributions import StandardNormal
from nfcourse.flows.glow import initialize_actnorms
from nfcourse.data.images import UniformDequantizer, independent_pixel_bits, to_pixels
from nfcourse.data.images import dequantize
from nfcourse.core.flow import Inverse
from nfcourse.flows.coupling import AffineCoupling, Checkerboard, checkerboard_mask
from nfcourse.flows.images import (FlipChannels, MultiScaleLevel, Reshape, VariationalDequantizer,
                                   interpolate, sample_images)
from nfcourse.flows.simple import Logit, Sigmoid
from nfcourse.training.objectives import evaluate_bits_per_dim, image_nll
from nfcourse.data.images import bits_per_dim
from nfcourse.models import multiscale_realnvp, tiny_realnvp
from nfcourse.core.model import FlowModel

REAL_DIR = os.environ.get("NFCOURSE_MNIST_DIR")
HAVE_REAL = bool(REAL_DIR) and Path(REAL_DIR, "t10k-images-idx3-ubyte.gz").exists()


# ----------------------------------------------------------------------------- loader


def _fake_split(directory: Path, n: int = 5, compress: bool = True, seed: int = 0):
    """Write a small test split in IDX format; return (images, labels, checksums)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    names = M.SPLITS["test"]
    suffix = ".gz" if compress else ""
    M.write_idx(directory / f"{names[0]}{suffix}", images, compress)
    M.write_idx(directory / f"{names[1]}{suffix}", labels, compress)
    raw = {}
    for name in names:
        path = directory / f"{name}{suffix}"
        data = path.read_bytes()
        raw[name] = M.sha256_hex(gzip.decompress(data) if compress else data)
    return images, labels, raw


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Downloads fail as on an offline machine; the cache is an empty temporary folder."""
    monkeypatch.setenv(M.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(M.ENV_DIR, raising=False)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(M.urllib.request, "urlopen", offline)


@pytest.mark.parametrize("compress", [True, False])
def test_loader_reads_gzipped_and_raw_idx(tmp_path, compress, no_network):
    images, labels, sums = _fake_split(tmp_path, compress=compress)
    split = M.load_mnist("test", tmp_path, download=False, checksums=sums)
    assert split.images.dtype == torch.uint8 and split.images.shape == (5, 1, 28, 28)
    assert torch.equal(split.images[:, 0], torch.from_numpy(images))
    assert split.labels.tolist() == labels.tolist() and split.labels.dtype == torch.int64


def test_loader_takes_the_directory_from_the_environment(tmp_path, monkeypatch, no_network):
    _, labels, sums = _fake_split(tmp_path)
    monkeypatch.setenv(M.ENV_DIR, str(tmp_path))
    assert M.load_mnist("test", checksums=sums).labels.tolist() == labels.tolist()


def test_checksum_of_the_decompressed_content_is_enforced(tmp_path, no_network):
    _, _, sums = _fake_split(tmp_path)
    wrong = {**sums, "t10k-images-idx3-ubyte": "0" * 64}
    with pytest.raises(M.ChecksumError, match="t10k-images-idx3-ubyte.*SHA-256.*expected 0000"):
        M.load_mnist("test", tmp_path, download=False, checksums=wrong)
    # the published checksums reject these (random) images: nothing is silently accepted
    with pytest.raises(M.ChecksumError, match="not the original MNIST"):
        M.load_mnist("test", tmp_path, download=False)


def test_missing_data_without_network_says_what_to_set(tmp_path, no_network):
    with pytest.raises(M.MnistError, match="Downloading is off.*NFCOURSE_MNIST_DIR"):
        M.load_mnist("test", tmp_path, download=False)
    with pytest.raises(M.MnistError, match="Download failed.*unreachable.*NFCOURSE_MNIST_DIR"):
        M.load_mnist("test", tmp_path)
    with pytest.raises(M.MnistError, match="does not exist"):
        M.load_mnist("test", tmp_path / "nope")
    with pytest.raises(ValueError, match="split must be one of"):
        M.load_mnist("validation", tmp_path)


def test_download_is_verified_before_it_is_kept(tmp_path, monkeypatch):
    source = tmp_path / "mirror"
    source.mkdir()
    _, labels, sums = _fake_split(source)
    cache = tmp_path / "cache"
    monkeypatch.setenv(M.ENV_CACHE, str(cache))
    monkeypatch.delenv(M.ENV_DIR, raising=False)

    class Response:
        def __init__(self, data):
            self.data = data

        def read(self):
            return self.data

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    corrupt = {"on": True}

    def fake_urlopen(url, timeout):
        data = (source / url.rsplit("/", 1)[1]).read_bytes()
        if corrupt["on"]:
            data = gzip.compress(gzip.decompress(data)[:-1] + b"\x01")
        return Response(data)

    monkeypatch.setattr(M.urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(M.MnistError, match="Download failed.*SHA-256"):
        M.load_mnist("test", checksums=sums)
    assert not list(M.cache_dir().glob("*.gz"))          # nothing corrupt was kept
    corrupt["on"] = False
    split = M.load_mnist("test", checksums=sums)
    assert split.labels.tolist() == labels.tolist() and split.source == M.cache_dir()
    assert sorted(p.name for p in M.cache_dir().glob("*.gz")) == sorted(
        f"{n}.gz" for n in M.SPLITS["test"])


def test_truncated_idx_is_reported():
    data = bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x00" * 9
    with pytest.raises(M.MnistError, match="truncated"):
        M.parse_idx(data, "x")
    with pytest.raises(M.MnistError, match="not an IDX file"):
        M.parse_idx(b"<html>", "x")


@pytest.mark.skipif(not HAVE_REAL, reason="offline MNIST copy not available")
def test_the_offline_test_split_is_the_real_one():
    split = M.load_mnist("test", download=False)
    assert split.images.shape == (10_000, 1, 28, 28)
    assert split.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(split.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958,
                                                     1028, 974, 1009]
    assert abs(split.images.double().mean().item() - 33.79) < 0.01
    data = M.mnist_train_test(False, ci_train=8000)
    assert len(data.train) == 8000 and len(data.test) == 2000 and not data.full
    assert "8,000" in data.description and "2,000" in data.description
    # the two parts are disjoint pieces of one permutation of the 10,000 images
    both = torch.cat([data.train, data.test]).reshape(10_000, -1).double()
    assert torch.allclose(both.sum(0), split.images.reshape(10_000, -1).double().sum(0))


# ----------------------------------------------------------------------------- bits/dim


class Logistic(torch.nn.Module):
    """Standard logistic base: with the alpha = 0 logit it makes y uniform on the box."""

    def __init__(self, shape):
        super().__init__()
        self.event_shape = shape
        self.register_buffer("_anchor", torch.zeros(1))

    def log_prob(self, z):
        return (F.logsigmoid(z) + F.logsigmoid(-z)).flatten(1).sum(1)


@pytest.mark.parametrize("alpha", [0.0, 0.05])
def test_uniform_model_scores_exactly_8_bits(alpha):
    shape = (1, 6, 6)
    v = torch.randint(0, 256, (64, *shape), dtype=torch.uint8)
    model = FlowModel(Inverse(Logit(shape, alpha)), base=Logistic(shape))
    # the logit's log-det is counted: with alpha > 0 the density of y is (1 - 2 alpha)^D
    bits, _ = evaluate_bits_per_dim(model, v)
    assert bits == pytest.approx(8.0 - math.log2(1 - 2 * alpha), abs=1e-5)
    assert bits_per_dim(0.0, 784) == 8.0


@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.3])
def test_logit_logdet_matches_autograd(alpha, gen):
    # forward is the logit (box -> line); the image models use it inverted (line -> box)
    check_flow(Logit((2, 3, 3), alpha), 0.01 + 0.98 * torch.rand(4, 2, 3, 3, generator=gen))
    check_flow(Inverse(Logit((2, 3, 3), alpha)), torch.randn(4, 2, 3, 3, generator=gen) * 3)
    # and from pixels at the very edges of the box, which alpha > 0 keeps finite
    y = torch.tensor([[0.0, 1e-4, 0.5, 1.0]], dtype=torch.float64)
    if alpha > 0:
        _, ld = Logit(4, alpha).double()(y)
        jac = torch.autograd.functional.jacobian(lambda t: Logit(4, alpha)(t)[0], y)[0, :, 0, :]
        assert torch.allclose(ld, torch.linalg.slogdet(jac)[1])
    else:   # the plain logit is the inverse of the sigmoid
        z = torch.randn(3, 4, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(Logit(4).double().inverse(z), Sigmoid(4).double()(z))
    with pytest.raises(ValueError, match=r"must lie in"):
        Logit(4, alpha)(torch.tensor([[0.5, 5.0, 0.1, 0.1]]))
    with pytest.raises(ValueError, match="alpha"):
        Logit(4, 0.5)


def _exact_log_p(v):
    """log P(v) under y = sigmoid(z), z ~ N(0, I): the cells' Gaussian probabilities."""
    normal = torch.distributions.Normal(0.0, 1.0)
    lo = torch.special.logit(v.double() / 256)
    hi = torch.special.logit((v.double() + 1) / 256)
    return (normal.cdf(hi) - normal.cdf(lo)).log().flatten(1).sum(1)


def test_variational_dequantization_lower_bounds_the_likelihood(gen):
    shape = (1, 2, 2)
    v = torch.tensor([[[[0, 40], [128, 255]]], [[[7, 7], [200, 90]]]], dtype=torch.uint8)
    model = FlowModel(Inverse(Logit(shape)), base=StandardNormal(shape)).double()
    exact = _exact_log_p(v)                                 # log P(v), 4 pixels
    deq = VariationalDequantizer(1, hidden=4).double()
    with torch.no_grad():
        for p in deq.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    k = 4000
    vv = v.repeat_interleave(k, 0)
    for q in (deq, UniformDequantizer()):
        elbo = -image_nll(model, vv, q, generator=gen).reshape(2, k) - 4 * math.log(256)
        # Jensen: the expected ELBO of any q is below log P(v)
        assert (elbo.mean(1) < exact).all()
    # with uniform q, importance weighting is Monte Carlo over the cell: it recovers log P(v)
    iw = torch.logsumexp(elbo, 1) - math.log(k)
    assert torch.allclose(iw, exact, atol=0.1), (iw, exact)
    # the variational q is an exact density: log q(u | v) = log N(e) - log|det du/de|
    e = deq.noise((1, *shape), gen).double()
    u, log_q = deq(v[:1], e)
    jac = torch.autograd.functional.jacobian(lambda t: deq(v[:1], t)[0], e).reshape(4, 4)
    logistic = (F.logsigmoid(e) + F.logsigmoid(-e)).sum()
    assert torch.allclose(log_q[0], logistic - torch.linalg.slogdet(jac)[1])
    assert ((u > 0) & (u < 1)).all()
    # a new (zero-initialised) variational dequantiser is exactly uniform dequantisation
    fresh = VariationalDequantizer(1, hidden=4).double()
    u, log_q = fresh(v, fresh.noise(v.shape, gen).double())
    assert torch.allclose(log_q, torch.zeros(2, dtype=torch.float64), atol=1e-9)
    # in bits/dim the bound lies above the exact code length
    assert bits_per_dim(float(-(elbo.mean() + 4 * math.log(256))), 4) > float(
        -exact.mean() / 4 / math.log(2))


def test_dequantize_and_pixels_round_trip(gen):
    v = torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8, generator=gen)
    y, log_q = dequantize(v, generator=gen)
    assert ((y >= v / 256) & (y < (v.double() + 1) / 256)).all() and (log_q == 0).all()
    assert torch.equal(to_pixels(y), v)
    with pytest.raises(TypeError, match="integer pixel levels"):
        dequantize(v.float())
    with pytest.raises(ValueError, match="0..255"):
        dequantize(torch.full((1, 1, 2, 2), 300, dtype=torch.int64))


def test_independent_pixel_baseline():
    zeros = torch.zeros(10, 1, 2, 2, dtype=torch.uint8)
    assert independent_pixel_bits(zeros, zeros, prior=1e-9) < 1e-6
    assert independent_pixel_bits(zeros, zeros + 5, prior=1.0) > 8.0  # unseen level costs more


# ----------------------------------------------------------------------------- layers and models


def _randomise(module, gen, scale=0.1):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def test_image_layers_pass_check_flow(gen):
    for parity in (0, 1):
        c = AffineCoupling(Checkerboard((2, 4, 4), parity), hidden=8)
        _randomise(c, gen)
        check_flow(c, torch.randn(3, 2, 4, 4, generator=gen))
        # the kept pixels are untouched
        z = torch.randn(2, 2, 4, 4, generator=gen)
        keep = checkerboard_mask((4, 4), parity).bool().expand(2, 2, 4, 4)
        assert torch.equal(c(z)[0][keep], z[keep])
    check_flow(FlipChannels((4, 2, 2)), torch.randn(3, 4, 2, 2, generator=gen))
    r = Reshape((1, 2, 2), (4,))
    z = torch.randn(3, 1, 2, 2, generator=gen)
    assert torch.equal(r.inverse(r(z)[0])[0], z) and (r(z)[1] == 0).all()


def test_multiscale_and_tiny_models_pass_check_flow(gen):
    level = MultiScaleLevel((1, 8, 8), scales=3, hidden=8, checker=1, channel=2)
    initialize_actnorms(level, torch.randn(32, 1, 8, 8, generator=gen))
    _randomise(level, gen)
    check_flow(level, torch.randn(2, 1, 8, 8, generator=gen))
    tiny = tiny_realnvp((1, 4, 4), layers=3, hidden=8)
    _randomise(tiny, gen)
    check_flow(tiny.flow, torch.randn(2, 1, 4, 4, generator=gen) * 0.5)
    # every pixel is transformed by some coupling of the dense model
    masks = [f.partition.mask for f in tiny.flow.flows if isinstance(f, AffineCoupling)]
    assert not torch.stack(masks).all(0).any()


def test_full_size_models_have_the_lecture_shapes():
    tiny = tiny_realnvp()
    couplings = [f for f in tiny.flow.flows if isinstance(f, AffineCoupling)]
    assert len(couplings) == 12 and couplings[0].partition.mask.numel() == 784
    assert couplings[0].net[0].out_features == 256
    model = multiscale_realnvp(hidden=16)
    y = torch.rand(4, 1, 28, 28)
    initialize_actnorms(model, y)
    assert model.log_prob(y).shape == (4,)


def test_sampling_and_interpolation(gen):
    model = multiscale_realnvp((1, 8, 8), scales=2, hidden=8, checker=1, channel=1)
    initialize_actnorms(model, torch.rand(64, 1, 8, 8, generator=gen))
    _randomise(model, gen, 0.05)
    for t in (0.5, 1.0):
        y = sample_images(model, 5, t, generator=gen)
        assert y.shape == (5, 1, 8, 8) and (y >= 0).all() and (y <= 1).all()
    a, b = (torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8, generator=gen) for _ in "ab")
    path = interpolate(model, a, b, steps=5)
    assert path.shape == (5, 1, 8, 8)
    # the end points decode back to the two images: the latents are exact
    assert torch.equal(to_pixels(path[0]), a) and torch.equal(to_pixels(path[-1]), b)
    with pytest.raises(ValueError, match="temperature"):
        sample_images(model, 2, 0.0)


def test_gated_recipe_layout_passes_check_flow_and_starts_as_the_identity(gen):
    from nfcourse.nn import GatedResidualBlock, gated_resnet

    level = MultiScaleLevel((1, 8, 8), scales=2, hidden=(4, 6, 8), checker=(2, 0),
                            channel=(1, 2), blocks=2, actnorm=False)
    z = torch.randn(3, 1, 8, 8, generator=gen)
    x, logdet = level(z)           # every conditioner ends at zero: a new flow is a permutation
    assert torch.equal(logdet, torch.zeros(3)) and torch.allclose(level.inverse(x)[0], z)
    _randomise(level, gen)
    check_flow(level, torch.randn(2, 1, 8, 8, generator=gen))
    # the layout is what was asked for: 2 checkerboard couplings, then 1 + 2 channel couplings
    from nfcourse.flows.glow import Split

    couplings = [m for m in level.modules() if isinstance(m, AffineCoupling)
                 and not isinstance(m, Split)]
    assert [type(c.partition).__name__ for c in couplings].count("Checkerboard") == 2
    assert [type(c.partition).__name__ for c in couplings].count("ChannelSplit") == 3
    assert sum(isinstance(m, GatedResidualBlock) for m in level.modules()) == 2 * 5
    net = gated_resnet(3, 5, hidden=4, blocks=1)
    assert net(torch.randn(2, 3, 5, 5)).abs().max() == 0     # zero last layer
    with pytest.raises(ValueError, match="checker must be one count"):
        MultiScaleLevel((1, 8, 8), scales=2, hidden=4, checker=(1, 0, 0), channel=(1, 1))
    with pytest.raises(ValueError, match="one per"):
        MultiScaleLevel((1, 8, 8), scales=2, hidden=(4, 4), checker=(1, 0), channel=(1, 2))


def test_variational_dequantizer_with_gated_couplings_is_uniform_at_start(gen):
    torch.manual_seed(0)   # the networks initialise from the global RNG: fix it for this test
    deq = VariationalDequantizer(1, hidden=4, couplings=3, blocks=1).double()
    v = torch.randint(0, 256, (4, 1, 6, 6), dtype=torch.uint8, generator=gen)
    e = deq.noise(v.shape, gen).double()
    u, log_q = deq(v, e)
    # at initialisation u = sigmoid(e) exactly: q is uniform, log q(u | v) = 0 for every image
    assert torch.allclose(u, torch.sigmoid(e)) and torch.allclose(log_q, torch.zeros(4).double(),
                                                                  atol=1e-9)
    _randomise(deq, gen)
    check_flow(deq.flow_given(v), e)
    assert len(deq.couplings) == 3 and deq.spec["couplings"] == 3


def test_the_glow_preset_is_the_recipe_with_glow_steps():
    from nfcourse.flows.glow import ActNorm, InvertibleConv1x1
    from nfcourse.models import MNIST_GLOW
    from nfcourse.training.images import mnist_run

    torch.manual_seed(0)
    glow_run, rnvp_run = mnist_run("glow"), mnist_run("pretrained")
    assert glow_run.spec["name"] == "multiscale_glow" and glow_run.spec["kwargs"] == MNIST_GLOW
    assert glow_run.spec["dequant_kwargs"] == rnvp_run.spec["dequant_kwargs"]
    mixes = [m for m in glow_run.model.modules() if isinstance(m, InvertibleConv1x1)]
    norms = [m for m in glow_run.model.modules() if isinstance(m, ActNorm)]
    assert len(mixes) == len(norms) == 3 + 4            # one per Glow step, at both scales
    assert not any(isinstance(m, (InvertibleConv1x1, ActNorm)) for m in rnvp_run.model.modules())
    # the two differ by the Glow steps' own parameters only: the couplings are the same
    extra = sum(p.numel() for m in mixes + norms for p in m.parameters())
    count = lambda run: sum(p.numel() for p in run.model.parameters())   # noqa: E731
    assert count(glow_run) - count(rnvp_run) == extra
    # --model multiscale with the glow preset trains the RealNVP recipe, and the reverse
    assert mnist_run("glow", model="multiscale").spec["name"] == "multiscale_realnvp"
    assert mnist_run("pretrained", model="glow").spec["kwargs"] == MNIST_GLOW


def test_channel_norm_two_pass_matches_var_mean_and_keeps_models_unchanged(gen, monkeypatch):
    """ChannelNorm computes its variance in two passes (faster than torch.var_mean over the
    channels of NCHW on the CPU): the same normalisation, values and gradients, as var_mean."""
    from nfcourse.nn import ChannelNorm

    def reference(norm: ChannelNorm, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
        return (x - mean) * torch.rsqrt(var + norm.eps) * norm.weight + norm.bias

    norm = ChannelNorm(6).double()
    with torch.no_grad():
        norm.weight.normal_(generator=gen)
        norm.bias.normal_(generator=gen)
    x = (3 + 2 * torch.randn(4, 6, 5, 7, generator=gen, dtype=torch.float64)).requires_grad_()
    out = norm(x)
    torch.testing.assert_close(out, reference(norm, x), rtol=1e-12, atol=1e-12)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    ours = torch.autograd.grad(out, [x, norm.weight], g)
    ref = torch.autograd.grad(reference(norm, x), [x, norm.weight], g)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert norm(torch.zeros(0, 6, 2, 2, dtype=torch.float64)).shape == (0, 6, 2, 2)
    # chapter 5's page model: the same log-density (float64) with either formula
    from nfcourse.models import MNIST_PAGE

    torch.manual_seed(0)
    model = multiscale_realnvp(**MNIST_PAGE).double()
    _randomise(model, gen)
    y = torch.rand(3, 1, 28, 28, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        ours_lp = model.log_prob(y)
        monkeypatch.setattr(ChannelNorm, "forward", reference)
        torch.testing.assert_close(ours_lp, model.log_prob(y), rtol=1e-10, atol=1e-8)
