"""The training loop: it learns, resumes exactly, checkpoints safely, and fails loudly."""

import math
import os

import pytest
import torch

from nfcourse.book import seed_everything
from nfcourse.training.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from nfcourse.data import two_moons
from nfcourse.models import realnvp
from nfcourse.training.engine import CosineWithWarmup, TrainConfig, evaluate_nll, fit, progress_disabled

SMALL = TrainConfig(steps=40, batch_size=128, eval_every=10, eval_size=1024, warmup=5)


def _model(seed: int = 0):
    seed_everything(seed)
    return realnvp(2, 4, 16)


def test_short_training_lowers_the_held_out_nll():
    model = _model()
    held_out = two_moons(4096, seed=99)
    before = evaluate_nll(model, held_out)
    history = fit(model, two_moons, TrainConfig(steps=150, batch_size=256, eval_every=50,
                                                eval_size=2048, warmup=10), progress=False)
    after = evaluate_nll(model, held_out)
    assert after < before - 0.3, (before, after)
    assert history.steps_done == 150 and history.finished
    assert history.eval_steps == [50, 100, 150]
    assert len(history.lr) == 150 and history.lr[0] < history.lr[10]  # warm-up
    assert history.wall_time > 0


def test_resume_is_bit_for_bit(tmp_path):
    ckpt = tmp_path / "run.pt"
    one_go = _model()
    h_one = fit(one_go, two_moons, SMALL, progress=False)
    split = _model()
    h_first = fit(split, two_moons, SMALL, checkpoint=ckpt, stop_at=20, progress=False)
    assert not h_first.finished and h_first.steps_done == 20
    torch.manual_seed(1234)  # whatever happens in between must not matter
    resumed = _model(seed=7)  # different initial weights: all state comes from the file
    h_two = fit(resumed, two_moons, SMALL, checkpoint=ckpt, resume=True, progress=False)
    for (name, a), b in zip(one_go.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert h_two.train_loss == h_one.train_loss
    assert h_two.eval_loss == h_one.eval_loss and h_two.lr == h_one.lr
    assert h_two.best_step == h_one.best_step


def test_resume_with_a_different_config_is_refused(tmp_path):
    ckpt = tmp_path / "run.pt"
    fit(_model(), two_moons, SMALL, checkpoint=ckpt, stop_at=10, progress=False)
    other = TrainConfig(steps=40, batch_size=128, eval_every=10, eval_size=1024, warmup=5,
                        lr=1e-4)
    with pytest.raises(ValueError, match="different config.*lr"):
        fit(_model(), two_moons, other, checkpoint=ckpt, resume=True, progress=False)
    with pytest.raises(ValueError, match="needs checkpoint="):
        fit(_model(), two_moons, SMALL, resume=True, progress=False)


def test_checkpoint_round_trip_rebuilds_the_model(tmp_path):
    ckpt = tmp_path / "m.pt"
    model = _model()
    spec = {"name": "realnvp", "kwargs": {"features": 2, "layers": 4, "hidden": 16}}
    fit(model, two_moons, SMALL, checkpoint=ckpt, model_spec=spec, progress=False)
    loaded, payload = load_model(ckpt)
    x = two_moons(100, seed=3)
    torch.testing.assert_close(loaded.log_prob(x), model.log_prob(x), rtol=0, atol=0)
    assert payload["history"]["finished"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary files left over


def test_truncated_and_corrupt_checkpoints_raise_a_clear_error(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": {"w": torch.ones(1000)}})
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    for path in (truncated, garbage):
        with pytest.raises(CheckpointError, match=f"{path.name}.*truncated or corrupt.*train again"):
            load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist.*nfcourse train"):
        load_checkpoint(tmp_path / "missing.pt")


def test_foreign_files_are_refused(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not an nfcourse checkpoint"):
        load_checkpoint(plain)
    pickled = tmp_path / "pickled.pt"
    torch.save({"obj": CosineWithWarmup(1, 1, 0.0, True)}, pickled)
    with pytest.raises(CheckpointError, match="safe loading"):
        load_checkpoint(pickled)


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}})
    with pytest.raises(Exception):
        save_checkpoint(path, {"model": lambda: None})  # cannot be pickled
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_early_stopping_and_restoring_the_best_weights():
    model = _model()
    cfg = TrainConfig(steps=1000, batch_size=64, eval_every=10, eval_size=512, warmup=0,
                      lr=1e-9, patience=2, min_delta=0.01, schedule="constant")
    history = fit(model, two_moons, cfg, progress=False)
    assert history.stopped_early and history.finished
    assert history.steps_done == 30 and history.best_step == 10


def test_training_on_a_fixed_tensor_needs_held_out_data():
    x = two_moons(500, seed=1)
    with pytest.raises(ValueError, match="pass eval_data="):
        fit(_model(), x, SMALL, progress=False)
    history = fit(_model(), x, SMALL, eval_data=two_moons(500, seed=2), progress=False)
    assert history.finished


def test_divergence_and_bad_data_raise():
    def huge(n, g):
        return 1e30 * torch.ones(n, 2)

    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        fit(_model(), huge, SMALL, eval_data=two_moons(64, seed=1), progress=False)

    def wrong_shape(n, g):
        return torch.zeros(n, 3)

    with pytest.raises(ValueError, match=r"expected shape \[B, 2\]"):
        fit(_model(), wrong_shape, SMALL, eval_data=two_moons(64, seed=1), progress=False)

    def with_nan(n, g):
        x = two_moons(n, g)
        x[0, 0] = math.nan
        return x

    with pytest.raises(ValueError, match="non-finite"):
        fit(_model(), with_nan, SMALL, eval_data=two_moons(64, seed=1), progress=False)


@pytest.mark.parametrize("bad", [dict(steps=0), dict(lr=-1.0), dict(schedule="linear"),
                                 dict(clip_grad=0.0), dict(patience=0), dict(batch_size=2.5)])
def test_bad_configs_are_rejected(bad):
    with pytest.raises(ValueError, match="TrainConfig"):
        TrainConfig(**bad)


def test_schedule_warms_up_then_decays_to_the_floor():
    f = CosineWithWarmup(steps=100, warmup=10, floor=0.1, cosine=True)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(100) == pytest.approx(0.1)
    assert all(f(i) >= f(i + 1) for i in range(10, 100))
    assert CosineWithWarmup(100, 0, 0.0, cosine=False)(50) == 1.0


def test_progress_bar_is_quiet_in_ci():
    assert progress_disabled({"CI": "true"})
    assert progress_disabled({"TQDM_DISABLE": "1"})
    assert not progress_disabled({"TQDM_DISABLE": "0"})
    assert not progress_disabled({})
    assert not progress_disabled({"CI": "0"})
    assert os.environ.get("TQDM_DISABLE") == "1"  # conftest keeps test output quiet
