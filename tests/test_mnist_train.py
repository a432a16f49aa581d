"""The image trainer: resume, the `train mnist` command, and DDP under torchrun (gloo, CPU)."""

import os
import subprocess
import sys
import textwrap
import urllib.error
from pathlib import Path

import pytest
import torch

from nfcourse.cli import main
from nfcourse.book import seed_everything
from nfcourse.data import mnist as M
from nfcourse.models import multiscale_realnvp
from nfcourse.training.engine import TrainConfig
from nfcourse.training.images import load_image_model, train_images

REAL_DIR = os.environ.get("NFCOURSE_MNIST_DIR")
HAVE_REAL = bool(REAL_DIR) and Path(REAL_DIR, "t10k-images-idx3-ubyte.gz").exists()
SRC = str(Path(__file__).resolve().parents[1] / "src")

# One definition of the run, shared by the single-process test and the torchrun workers.
RUN = textwrap.dedent("""
    import torch
    from nfcourse.book import seed_everything
    from nfcourse.flows.images import VariationalDequantizer
    from nfcourse.models import multiscale_realnvp
    from nfcourse.training.engine import TrainConfig
    from nfcourse.training.images import train_images

    def run(batch_size=8, steps=3):
        torch.set_num_threads(1)
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=g)
        seed_everything(0)
        model = multiscale_realnvp((1, 8, 8), scales=2, hidden=8, checker=1, channel=1)
        deq = VariationalDequantizer(1, hidden=4)
        cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=1e-2, warmup=0,
                          eval_every=2, eval_size=8, seed=3, weight_decay=0.0,
                          restore_best=False)
        history = train_images(model, images[:32], cfg, eval_images=images[32:],
                               dequantizer=deq, progress=False)
        state = {**{f"model.{k}": v for k, v in model.state_dict().items()},
                 **{f"deq.{k}": v for k, v in deq.state_dict().items()}}
        return state, history
""")


def _run_single(batch_size=8):
    namespace: dict = {}
    exec(RUN, namespace)
    return namespace["run"](batch_size)


def test_ddp_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(RUN + textwrap.dedent(f"""
        import torch.distributed as dist
        dist.init_process_group("gloo")
        state, history = run()
        if dist.get_rank() == 0:
            torch.save({{"state": state, "eval": history.eval_loss}}, {str(tmp_path / 'ddp.pt')!r})
        dist.destroy_process_group()
    """))
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--standalone", str(worker)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    single, history = _run_single()
    for name, value in single.items():
        torch.testing.assert_close(ddp["state"][name], value, atol=2e-5, rtol=1e-4,
                                   msg=f"DDP and single-process weights differ at {name}")
    assert ddp["eval"] == pytest.approx(history.eval_loss, abs=5e-3)  # nats per 64-pixel image
    # the comparison has teeth: a different global batch gives different weights
    other, _ = _run_single(batch_size=4)
    assert any(not torch.allclose(other[k], single[k], atol=1e-4) for k in single)


def test_resume_continues_the_same_run(tmp_path):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (24, 1, 4, 4), dtype=torch.uint8, generator=g)
    cfg = TrainConfig(steps=6, batch_size=4, lr=5e-3, warmup=0, eval_every=3, eval_size=4,
                      seed=0, checkpoint_every=3)

    def fresh():
        seed_everything(0)
        return multiscale_realnvp((1, 4, 4), scales=2, hidden=4, checker=1, channel=1)

    straight = fresh()
    train_images(straight, images[:16], cfg, eval_images=images[16:], progress=False)
    paused = fresh()
    ckpt = tmp_path / "run.pt"
    h = train_images(paused, images[:16], cfg, eval_images=images[16:], checkpoint=ckpt,
                     stop_at=3, progress=False)
    assert h.steps_done == 3 and not h.finished
    resumed = fresh()
    h = train_images(resumed, images[:16], cfg, eval_images=images[16:], checkpoint=ckpt,
                     resume=True, progress=False)
    assert h.steps_done == 6 and h.finished
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_trainer_rejects_bad_input():
    model = multiscale_realnvp((1, 4, 4), scales=1, hidden=4)
    ok = torch.zeros(4, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(TypeError, match="integer pixel levels"):
        train_images(model, ok.float(), TrainConfig(steps=1, batch_size=2), eval_images=ok)


def test_train_mnist_without_data_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(M.ENV_CACHE, str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(M.urllib.request, "urlopen", offline)
    rc = main(["train", "mnist", "--profile", "ci", "--data-dir", str(tmp_path),
               "--out", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and "NFCOURSE_MNIST_DIR" in err and "Traceback" not in err


@pytest.mark.skipif(not HAVE_REAL, reason="offline MNIST copy not available")
def test_train_mnist_command_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "mnist.pt"
    args = ["train", "mnist", "--profile", "ci", "--model", "tiny", "--hidden", "8",
            "--steps", "2", "--batch-size", "8", "--eval-every", "1", "--quiet",
            "--dequant", "uniform", "--threads", "1", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "8,000 of its 10,000" in printed and "bits/dim" in printed
    model, deq, ckpt = load_image_model(out)
    assert ckpt["history"]["finished"] and deq is None
    assert model.log_prob(torch.rand(2, 1, 28, 28)).shape == (2,)


@pytest.mark.skipif(not HAVE_REAL, reason="offline MNIST copy not available")
def test_paused_resumed_and_exported_run_has_provenance_and_loads_fresh(tmp_path, capsys):
    import hashlib
    import json

    out, export = tmp_path / "run.pt", tmp_path / "model.pt"
    base = ["train", "mnist", "--profile", "ci", "--preset", "ci", "--steps", "4",
            "--eval-every", "2", "--eval-size", "16", "--batch-size", "8", "--quiet",
            "--threads", "1", "--out", str(out), "--export", str(export)]
    assert main([*base, "--stop-at", "2"]) == 0
    assert "paused at step 2" in capsys.readouterr().out and not export.exists()
    assert main([*base, "--resume"]) == 0
    record = json.loads(Path(str(export) + ".json").read_text())
    assert record["steps"] == 4 and len(record["segments"]) == 2
    assert record["sha256"] == hashlib.sha256(export.read_bytes()).hexdigest()
    assert record["size_bytes"] == export.stat().st_size < out.stat().st_size
    assert record["curve"]["step"] == [2, 4] and len(record["curve"]["wall_time"]) == 2
    assert record["data"].startswith("only the MNIST test split") and not record["diverged"]
    # a fresh process rebuilds model and learned dequantiser and gets the recorded number
    code = ("import sys, json; from nfcourse.data.mnist import mnist_train_test; "
            "from nfcourse.training.images import load_image_model; "
            "from nfcourse.training.objectives import evaluate_bits_per_dim; "
            "m, d, _ = load_image_model(sys.argv[1]); "
            "print(json.dumps(evaluate_bits_per_dim(m, mnist_train_test(False).test, d)))")
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(export)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    bits, _ = json.loads(done.stdout)
    assert abs(bits - record["held_out_bits_per_dim"]) < 1e-4


@pytest.mark.skipif(not HAVE_REAL, reason="offline MNIST copy not available")
def test_train_mnist_runs_unchanged_under_torchrun(tmp_path):
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--standalone", "-m", "nfcourse", "train", "mnist", "--profile", "ci", "--model",
         "tiny", "--hidden", "8", "--steps", "2", "--batch-size", "8", "--eval-every", "1",
         "--quiet", "--threads", "1", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout and proc.stdout.count("trained 2 steps") == 1
    _, _, ckpt = load_image_model(out)
    assert ckpt["world_size"] == 2
