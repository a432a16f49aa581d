"""The one training engine: every kind of run resumes bit-for-bit, stops early, restores the
best weights on one fixed held-out set, and refuses to resume with other settings."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from nfcourse.core.seeding import seed_everything
from nfcourse.data import two_moons
from nfcourse.flows.images import VariationalDequantizer
from nfcourse.jko import JKOConfig, JKOStepObjective, coupling_map, gaussian_target
from nfcourse.jko.solver import jko_train_config
from nfcourse.matching import StraightPath, train_cfm
from nfcourse.models import realnvp, tiny_realnvp
from nfcourse.nn import VelocityMLP
from nfcourse.training.engine import TrainConfig, fit
from nfcourse.training.images import train_images
from nfcourse.training.objectives import ImageELBO, MaximumLikelihood
from nfcourse.vae import VAE, ELBOObjective

IMAGES = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8,
                       generator=torch.Generator().manual_seed(0))

# A run is (build a fresh trainable thing from a seed, train it: (thing, **fit kwargs) -> None)
Build = Callable[[int], nn.Module]
Train = Callable[..., Any]


def _same(x: object, y: object) -> bool:
    return torch.equal(x, y) if isinstance(x, Tensor) else x == y  # type: ignore[arg-type]


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    differ = [k for k in sa if not _same(sa[k], sb[k])]
    assert not differ, f"not bit-identical at {differ}"


def _check_resume(build: Build, train: Train, steps: int, tmp_path: Path) -> None:
    """``steps`` in one go == ``steps // 2``, checkpoint, resume, the rest (bit for bit)."""
    ckpt = tmp_path / "run.pt"
    straight = build(0)
    h_straight = train(straight)
    paused = build(0)
    h = train(paused, checkpoint=ckpt, stop_at=steps // 2)
    assert h.steps_done == steps // 2 and not h.finished
    torch.manual_seed(1234)               # whatever happens in between must not matter
    resumed = build(7)                    # other initial weights: all state is in the file
    h = train(resumed, checkpoint=ckpt, resume=True)
    assert h.finished and h.steps_done == steps
    _assert_same(straight, resumed)
    assert h.train_loss == h_straight.train_loss and h.eval_loss == h_straight.eval_loss
    trained, initial = straight.parameters(), build(0).parameters()
    assert not all(torch.equal(a, b) for a, b in zip(trained, initial))  # it did train


def _flow(seed: int) -> nn.Module:
    seed_everything(seed)
    return realnvp(2, 2, 8)


def test_2d_flow_resumes_exactly(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=8, batch_size=64, warmup=2, eval_every=3, eval_size=128)
    _check_resume(_flow, lambda m, **kw: fit(m, two_moons, cfg, progress=False, **kw), 8,
                  tmp_path)


def _image_objective(seed: int) -> nn.Module:
    seed_everything(seed)
    return ImageELBO(tiny_realnvp((1, 4, 4), layers=2, hidden=8),
                     VariationalDequantizer(1, hidden=4))


def test_image_flow_resumes_exactly(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=6, batch_size=8, warmup=0, eval_every=2, eval_size=8,
                      weight_decay=0.0)

    def train(objective: Any, **kw: Any) -> Any:
        return train_images(objective.model, IMAGES[:32], cfg, eval_images=IMAGES[32:],
                            dequantizer=objective.dequantizer, progress=False, **kw)

    _check_resume(_image_objective, train, 6, tmp_path)


def _vae(seed: int) -> nn.Module:
    seed_everything(seed)
    return ELBOObjective(VAE(2, 1, hidden=8), kl_warmup=5)


def test_vae_resumes_exactly_with_its_kl_warmup(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=8, batch_size=32, lr=3e-3, warmup=2, eval_every=3, eval_size=64)
    _check_resume(_vae, lambda m, **kw: fit(m, two_moons, cfg, progress=False, **kw), 8,
                  tmp_path)


@pytest.mark.parametrize("ema", [0.9, None])
def test_flow_matching_resumes_exactly(ema: float | None, tmp_path: Path) -> None:
    def field(seed: int) -> nn.Module:
        seed_everything(seed)
        return VelocityMLP(2, hidden=8, layers=2)

    def train(f: nn.Module, **kw: Any) -> Any:
        return train_cfm(f, StraightPath(), two_moons, steps=10, batch_size=16, seed=3,
                         ema=ema, eval_size=64, **kw)

    _check_resume(field, train, 10, tmp_path)


def test_the_ema_is_what_flow_matching_returns() -> None:
    runs = {}
    for ema in (0.9, None):
        seed_everything(0)
        runs[ema] = VelocityMLP(2, hidden=8, layers=2)
        train_cfm(runs[ema], StraightPath(), two_moons, steps=20, batch_size=16, ema=ema)
    # same stream, same steps: only the averaging differs
    assert not torch.equal(next(runs[0.9].parameters()), next(runs[None].parameters()))


def test_jko_inner_fit_resumes_exactly(tmp_path: Path) -> None:
    target = gaussian_target([1.0, -1.0], [[1.0, 0.3], [0.3, 0.5]])
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    cfg = jko_train_config(JKOConfig(tau=0.5, iterations=8, lr=1e-2), len(x))

    def step(seed: int) -> nn.Module:
        seed_everything(seed)
        flow = coupling_map(2, layers=2, hidden=8)
        with torch.no_grad():  # start away from the identity so the seed matters
            for p in flow.parameters():
                p.add_(0.01 * torch.randn_like(p))
        return JKOStepObjective(flow, target, 0.5)

    _check_resume(step, lambda o, **kw: fit(o, x, cfg, eval_data=x, progress=False, **kw), 8,
                  tmp_path)


def test_patience_stops_an_image_run() -> None:
    cfg = TrainConfig(steps=100, batch_size=8, lr=1e-9, warmup=0, schedule="constant",
                      eval_every=2, eval_size=8, patience=2, min_delta=1.0)
    h = train_images(tiny_realnvp((1, 4, 4), layers=2, hidden=8), IMAGES[:32], cfg,
                     eval_images=IMAGES[32:], progress=False)
    assert h.stopped_early and h.finished
    assert h.steps_done == 6 and h.eval_steps == [2, 4, 6] and h.best_step == 2


def test_restore_best_picks_the_best_on_one_fixed_held_out_set() -> None:
    # At this learning rate the held-out loss falls, then rises (the best step is 6 of 12);
    # the restored weights must score exactly the best value on the same held-out set.
    objective = _image_objective(0)
    cfg = TrainConfig(steps=12, batch_size=8, lr=0.03, warmup=0, schedule="constant",
                      eval_every=1, eval_size=8, clip_grad=None)
    h = fit(objective, IMAGES[:32], cfg, eval_data=IMAGES[32:], progress=False)
    assert h.best_eval_loss == min(h.eval_loss) and h.best_step < cfg.steps
    assert h.eval_steps[h.eval_loss.index(h.best_eval_loss)] == h.best_step
    assert objective.evaluate(IMAGES[32:40]) == h.best_eval_loss
    assert objective.evaluate(IMAGES[32:40]) != h.final_eval_loss


def test_a_diverging_run_is_stopped_reported_and_not_saved_as_best(tmp_path: Path) -> None:
    # lr 0.03 without clipping: the held-out loss falls, then climbs (see the test above). A
    # divergence limit below that climb stops the run at the first bad evaluation.
    cfg = TrainConfig(steps=12, batch_size=8, lr=0.03, warmup=0, schedule="constant",
                      eval_every=1, eval_size=8, clip_grad=None)
    free = fit(_image_objective(0), IMAGES[:32], cfg, eval_data=IMAGES[32:], progress=False)
    climb = max(free.eval_loss[free.eval_loss.index(free.best_eval_loss):]) - free.best_eval_loss
    assert climb > 0 and not free.diverged
    limit = climb / 2
    objective = _image_objective(0)
    h = fit(objective, IMAGES[:32], TrainConfig(**{**cfg.__dict__, "divergence": limit}),
            eval_data=IMAGES[32:], checkpoint=tmp_path / "run.pt", progress=False)
    assert h.diverged and h.stopped_early and h.finished and h.steps_done < cfg.steps
    assert h.eval_loss[-1] > h.best_eval_loss + limit and h.diverged_step == h.steps_done
    assert objective.evaluate(IMAGES[32:40]) == h.best_eval_loss  # the best weights are kept
    assert len(h.eval_wall_time) == len(h.eval_loss)
    with pytest.raises(ValueError, match="divergence"):
        TrainConfig(divergence=0.0)


def test_every_evaluation_scores_the_same_held_out_set() -> None:
    objective = _image_objective(0)
    cfg = TrainConfig(steps=4, batch_size=8, lr=1e-30, warmup=0, schedule="constant",
                      eval_every=1, eval_size=8)
    h = fit(objective, IMAGES[:32], cfg, eval_data=IMAGES[32:], progress=False)
    assert len(set(h.eval_loss)) == 1     # unchanged weights, same images and same noise


def test_resume_with_another_config_or_objective_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.pt"
    cfg = TrainConfig(steps=4, batch_size=8, warmup=0, eval_every=2, eval_size=8)
    train_images(tiny_realnvp((1, 4, 4), layers=2, hidden=8), IMAGES[:32], cfg,
                 eval_images=IMAGES[32:], checkpoint=ckpt, stop_at=2, progress=False)
    other = TrainConfig(steps=4, batch_size=8, warmup=0, eval_every=2, eval_size=8, lr=1e-4)
    with pytest.raises(ValueError, match=r"different config \(lr=0.002 vs 0.0001\)"):
        train_images(tiny_realnvp((1, 4, 4), layers=2, hidden=8), IMAGES[:32], other,
                     eval_images=IMAGES[32:], checkpoint=ckpt, resume=True, progress=False)
    with pytest.raises(ValueError, match="trained a ImageELBO, not a MaximumLikelihood"):
        fit(MaximumLikelihood(_flow(0)), two_moons, cfg, checkpoint=ckpt, resume=True,
            progress=False)


def test_a_plain_density_model_is_trained_by_maximum_likelihood() -> None:
    with pytest.raises(TypeError, match="neither an objective"):
        fit(nn.Linear(2, 2), two_moons, TrainConfig(steps=1), progress=False)
    cfg = TrainConfig(steps=3, batch_size=16, eval_every=1, eval_size=32)
    plain, wrapped = _flow(0), _flow(0)
    fit(plain, two_moons, cfg, progress=False)
    fit(MaximumLikelihood(wrapped), two_moons, cfg, progress=False)
    _assert_same(plain, wrapped)
