"""The 8x8 digits as a flow data set: 17 levels, honest dequantisation, bits/dim."""

import math

import pytest
import torch

from nfcourse.data.digits import (DIMS, LEVELS, DequantizedSampler, dequantize, digits_split,
                                  held_out_bits_per_dim, load_digit_levels, to_levels)
from nfcourse.data.images import bits_per_dim
from nfcourse.flows.glow import initialize_actnorms
from nfcourse.models import glow
from nfcourse.training.engine import TrainConfig, fit


def test_digits_have_17_levels_and_the_documented_shape():
    images, labels = load_digit_levels()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.uint8
    assert int(images.min()) == 0 and int(images.max()) == LEVELS - 1 == 16
    assert len(torch.unique(images)) == LEVELS
    assert sorted(torch.unique(labels).tolist()) == list(range(10))


def test_split_is_disjoint_deterministic_and_complete():
    a, b = digits_split(0.2, seed=0), digits_split(0.2, seed=0)
    assert torch.equal(a.train, b.train) and torch.equal(a.held_out, b.held_out)
    assert len(a.train) + len(a.held_out) == 1797 and len(a.held_out) == 359
    flat_train = {tuple(r.tolist()) for r in a.train.reshape(len(a.train), -1)}
    # duplicates inside the raw data are possible, so compare against the raw data's own rate
    images, _ = load_digit_levels()
    raw = [tuple(r.tolist()) for r in images.reshape(1797, -1)]
    duplicates = len(raw) - len(set(raw))
    overlap = sum(tuple(r.tolist()) in flat_train for r in a.held_out.reshape(len(a.held_out), -1))
    assert overlap <= duplicates
    assert not torch.equal(digits_split(0.2, seed=1).held_out, a.held_out)


def test_dequantize_stays_in_each_levels_cell(gen):
    levels = load_digit_levels()[0][:200]
    x = dequantize(levels, gen)
    assert x.dtype == torch.float32 and x.shape == levels.shape
    assert float(x.min()) >= -0.5 and float(x.max()) < 0.5
    assert torch.equal(to_levels(x), levels)              # noise never leaves the cell
    assert not torch.equal(dequantize(levels, gen), x)    # fresh noise every call


def test_bits_per_dim_of_the_uniform_model_is_log2_17():
    # q = 1 on [-1/2, 1/2)^64 is the uniform model: log q = 0 on every dequantised image
    assert bits_per_dim(0.0, DIMS, LEVELS) == pytest.approx(math.log2(17))
    held_out = digits_split().held_out
    bits, se = held_out_bits_per_dim(lambda x: torch.zeros(x.shape[0]), held_out, draws=2)
    assert bits == pytest.approx(math.log2(17)) and se == pytest.approx(0.0, abs=1e-12)
    # a density twice as high everywhere saves exactly one bit per image, 1/64 bit per pixel
    bits2, _ = held_out_bits_per_dim(lambda x: torch.full((x.shape[0],), math.log(2)),
                                     held_out, draws=1)
    assert bits - bits2 == pytest.approx(1 / 64)


def test_sampler_draws_training_images_with_fresh_noise(gen):
    split = digits_split()
    sampler = DequantizedSampler(split.train)
    x = sampler(32, gen)
    assert x.shape == (32, 1, 8, 8)
    train_rows = {tuple(r.tolist()) for r in split.train.reshape(len(split.train), -1)}
    assert all(tuple(r.tolist()) in train_rows for r in to_levels(x).reshape(32, -1))


def test_digits_bad_input():
    with pytest.raises(TypeError, match="integer pixel levels"):
        dequantize(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"0\.\.16"):
        dequantize(torch.full((1, 1, 8, 8), 17, dtype=torch.uint8))
    with pytest.raises(ValueError, match="fraction"):
        digits_split(1.5)
    with pytest.raises(ValueError, match="integer images"):
        DequantizedSampler(torch.zeros(4, 64))


@pytest.mark.slow
def test_short_glow_training_beats_the_uniform_model_and_reloads(tmp_path):
    torch.manual_seed(0)
    split = digits_split()
    model = glow((1, 8, 8), levels=2, steps=2, hidden=16)
    initialize_actnorms(model, dequantize(split.train, torch.Generator().manual_seed(1)))
    fit(model, DequantizedSampler(split.train),
        TrainConfig(steps=60, batch_size=128, lr=3e-3, warmup=10, eval_every=60, eval_size=256),
        progress=False)
    model.eval()
    bits, se = held_out_bits_per_dim(model.log_prob, split.held_out, draws=1)
    assert bits < math.log2(17) - 0.5 and se < 0.1
    torch.save(model.state_dict(), tmp_path / "m.pt")
    again = glow((1, 8, 8), levels=2, steps=2, hidden=16)
    again.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    again.train()   # training mode: an uninitialised ActNorm would re-initialise here
    x = dequantize(split.held_out[:16], torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(again.log_prob(x), model.log_prob(x))


class _UniformOnTheBox(torch.nn.Module):
    """The density 1 on ``[0, 1)^D``: every dequantised image has log q(y) = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        return torch.zeros(y.shape[0]) + 0 * self.dummy


def test_the_image_pipeline_counts_17_levels_for_the_digits():
    from nfcourse.training.objectives import evaluate_bits_per_dim

    held = digits_split().held_out
    bits, se = evaluate_bits_per_dim(_UniformOnTheBox(), held, levels=LEVELS)
    assert bits == pytest.approx(math.log2(17), abs=1e-12) and se == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match=r"0\.\.16"):
        evaluate_bits_per_dim(_UniformOnTheBox(), held + 1, levels=LEVELS)


def test_glow_with_a_logit_is_a_density_on_the_unit_box_and_passes_check_flow():
    from nfcourse.core.testing import check_flow
    from nfcourse.flows.simple import Logit

    from nfcourse.core.model import FlowModel

    torch.manual_seed(0)
    box = glow((1, 8, 8), levels=2, steps=1, hidden=4, alpha=1e-3).double().eval()
    with torch.no_grad():
        for p in box.parameters():
            p.add_(0.05 * torch.randn_like(p))
    free = FlowModel(box.flow.flows[0])          # the same Glow levels, without the logit
    y = 0.02 + 0.96 * torch.rand(3, 1, 8, 8, dtype=torch.float64)
    x, logdet = Logit((1, 8, 8), 1e-3).double().forward(y)   # y -> logit space and its log-det
    torch.testing.assert_close(box.log_prob(y), free.log_prob(x) + logdet)
    check_flow(box.flow, torch.randn(2, 1, 8, 8, dtype=torch.float64))


def test_a_short_digits_run_with_a_learned_dequantiser_tightens_its_bound(tmp_path):
    from nfcourse.flows.images import VariationalDequantizer
    from nfcourse.training.images import train_images
    from nfcourse.training.objectives import evaluate_bits_per_dim

    torch.manual_seed(0)
    split = digits_split()
    model = glow((1, 8, 8), levels=2, steps=1, hidden=8, alpha=1e-5)
    deq = VariationalDequantizer(1, hidden=8, levels=LEVELS)
    assert deq.spec["levels"] == LEVELS
    train_images(model, split.train, TrainConfig(steps=40, batch_size=64, lr=5e-3, warmup=5,
                                                 eval_every=40, eval_size=128),
                 eval_images=split.held_out, dequantizer=deq, levels=LEVELS, progress=False)
    learned, _ = evaluate_bits_per_dim(model.eval(), split.held_out, deq.eval(), levels=LEVELS)
    uniform, _ = evaluate_bits_per_dim(model, split.held_out, levels=LEVELS)
    assert learned < uniform < math.log2(17)
    with pytest.raises(ValueError, match="levels must be >= 2"):
        VariationalDequantizer(1, levels=1)
