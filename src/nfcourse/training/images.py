"""Training image flows at scale: held-out bits/dim, atomic checkpoints, resume, and DDP.

:func:`train_images` is :func:`nfcourse.training.engine.fit` for 8-bit images. It takes the same
:class:`~nfcourse.training.engine.TrainConfig` (``eval_size`` is how many held-out images the periodic
evaluation uses; ``patience`` is not used), minimises the negative dequantisation ELBO
(:func:`nfcourse.flows.images.image_nll`), and reports bits per dimension.

It runs unchanged in one process or under ``torchrun --nproc_per_node=N``: when a
``torch.distributed`` process group is initialised, the model is wrapped in
``DistributedDataParallel`` and each step's *global* batch (``config.batch_size`` images and
their dequantisation noise, drawn from one seeded generator that every rank holds) is cut
into ``N`` equal shards, one per rank. DDP averages the gradients of the shard means, which
is the gradient of the global-batch mean: ``N`` processes take the same steps as one process
with the same global batch (up to floating-point summation order). Rank 0 writes checkpoints
and shows the progress bar; every rank can resume from them.

The command line is ``python -m nfcourse train mnist ...`` (:func:`main_train_mnist`).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from dataclasses import asdict
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from nfcourse.training.checkpoint import load_checkpoint, save_checkpoint
from nfcourse.data.images import UniformDequantizer, check_pixels
from nfcourse.flows.images import VariationalDequantizer, dequantize, image_nll
from nfcourse.data.images import bits_per_dim
from nfcourse.core.model import FlowModel
from nfcourse.training.engine import (CosineWithWarmup, History, TrainConfig, _check_same_config,
                            progress_disabled)
from nfcourse.core.validation import validation


class ImageObjective(nn.Module):
    """Model and dequantiser as one module (so DDP syncs both): ``forward(v, noise)`` is the
    per-image negative ELBO in nats."""

    def __init__(self, model: FlowModel, dequantizer: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.dequantizer = dequantizer if dequantizer is not None else UniformDequantizer()

    def forward(self, v: Tensor, noise: Tensor) -> Tensor:
        return image_nll(self.model, v, self.dequantizer, noise=noise)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _held_out_bits(objective: ImageObjective, images: Tensor, seed: int, batch: int = 500
                   ) -> float:
    """Mean held-out bits/dim with fixed noise; in DDP each rank scores a shard, then sum."""
    rank, world = _world()
    device = _device(objective)
    g = torch.Generator().manual_seed(seed)
    noise = objective.dequantizer.noise(images.shape, g)     # same draw on every rank
    was = objective.training
    objective.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    try:
        for idx in torch.arange(len(images)).tensor_split(world)[rank].split(batch):
            nll = objective(images[idx].to(device), noise[idx].to(device)).double()
            total += torch.stack([nll.sum(), nll.new_tensor(float(len(idx)))])
    finally:
        objective.train(was)
    if world > 1:
        dist.all_reduce(total)
    return float(bits_per_dim(float(total[0] / total[1]), images[0].numel()))


def train_images(model: FlowModel, train: Tensor, config: TrainConfig | None = None, *,
                 eval_images: Tensor, dequantizer: nn.Module | None = None,
                 checkpoint: str | os.PathLike[str] | None = None, resume: bool = False,
                 stop_at: int | None = None, model_spec: dict[str, Any] | None = None,
                 progress: bool | None = None, init_actnorm: int = 512) -> History:
    """Train ``model`` (and a variational ``dequantizer``) on integer images by max. likelihood.

    Args:
        model: a density on ``y`` in ``[0, 1)^D`` (e.g. :func:`nfcourse.flows.images.tiny_realnvp`).
        train, eval_images: disjoint uint8 images ``[N, C, H, W]``.
        config: :class:`TrainConfig`; ``batch_size`` is the global batch (divisible by the
            number of processes); ``eval_size`` held-out images are scored every
            ``eval_every`` steps (all of them at the last step).
        checkpoint, resume, stop_at, model_spec, progress: as in :func:`nfcourse.training.engine.fit`.
        init_actnorm: images of the first global batch's stream used to initialise ActNorms.
    Returns:
        :class:`History` with ``train_loss`` and ``eval_nll`` in **bits/dim**.
    """
    config = config or TrainConfig()
    check_pixels(train, "train images")
    check_pixels(eval_images, "eval images")
    rank, world = _world()
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the number of "
                         f"processes ({world}) so every rank gets an equal shard.")
    local = config.batch_size // world
    device = _device(model)
    objective = ImageObjective(model, dequantizer).to(device)
    dims = train[0].numel()
    generator = torch.Generator().manual_seed(config.seed)

    # ActNorm data-dependent init on the same images for every rank, before DDP copies weights.
    from nfcourse.flows.glow import initialize_actnorms
    init_g = torch.Generator().manual_seed(config.seed + 7)
    idx = torch.randint(0, len(train), (min(init_actnorm, len(train)),), generator=init_g)
    y0, _ = dequantize(train[idx], None, init_g)
    initialize_actnorms(model, y0.to(device, next(model.parameters()).dtype))

    opt = torch.optim.AdamW(objective.parameters(), lr=config.lr,
                            weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, CosineWithWarmup(
        config.steps, config.warmup, config.min_lr_ratio, config.schedule == "cosine"))
    history = History()
    best_state: dict[str, Tensor] | None = None
    if resume:
        if checkpoint is None:
            raise ValueError("train_images(resume=True) needs checkpoint= (the file to resume).")
        ckpt = load_checkpoint(checkpoint, map_location=device)
        _check_same_config(ckpt, config, checkpoint)
        objective.load_state_dict(ckpt["objective"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["rng"]["data"])
        history = History(**ckpt["history"])
        best_state = ckpt["best_objective"]

    net: nn.Module = objective
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(objective, device_ids=None if device.type == "cpu"
                                      else [device])

    def save() -> None:
        if checkpoint is not None and rank == 0:
            save_checkpoint(checkpoint, {
                "model_spec": model_spec, "model": model.state_dict(),
                "objective": objective.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "rng": {"data": generator.get_state()},
                "config": asdict(config), "history": asdict(history),
                "best_objective": best_state, "world_size": world})
        if world > 1:
            dist.barrier()

    last = config.steps if stop_at is None else min(stop_at, config.steps)
    quiet = (progress_disabled() if progress is None else not progress) or rank != 0
    bar = tqdm(total=config.steps, initial=history.steps_done, disable=quiet, desc="train",
               unit="step", dynamic_ncols=True)
    eval_subset = eval_images[:config.eval_size]
    started = time.perf_counter()
    objective.train()
    try:
        while not history.finished and history.steps_done < last:
            idx = torch.randint(0, len(train), (config.batch_size,), generator=generator)
            noise = objective.dequantizer.noise((config.batch_size, *train.shape[1:]),
                                                generator)
            mine = slice(rank * local, (rank + 1) * local)
            lr = opt.param_groups[0]["lr"]
            with validation(False):
                loss = net(train[idx[mine]].to(device), noise[mine].to(device)).mean()
            value = float(bits_per_dim(float(loss.detach()), dims))
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"train_images: the loss is {value} at step {history.steps_done + 1}; "
                    "lower the learning rate or raise warmup.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad is not None:
                nn.utils.clip_grad_norm_(objective.parameters(), config.clip_grad)
            opt.step()
            sched.step()
            history.train_loss.append(value)
            history.lr.append(lr)
            step = history.steps_done
            bar.update(1)
            final = step == config.steps
            if step % config.eval_every == 0 or final:
                bits = _held_out_bits(objective, eval_images if final else eval_subset,
                                      config.seed + 1)
                history.eval_steps.append(step)
                history.eval_nll.append(bits)
                if bits < history.best_eval_nll - config.min_delta:
                    history.best_eval_nll, history.best_step = bits, step
                    best_state = copy.deepcopy(objective.state_dict())
                bar.set_postfix(bpd=f"{value:.3f}", eval=f"{bits:.3f}")
            if final:
                history.finished = True
                if config.restore_best and best_state is not None:
                    objective.load_state_dict(best_state)
            elif config.checkpoint_every and step % config.checkpoint_every == 0:
                history.wall_time += time.perf_counter() - started
                started = time.perf_counter()
                save()
    finally:
        bar.close()
    history.wall_time += time.perf_counter() - started
    save()
    return history


# ----------------------------------------------------------------------------- command line

PRESETS: dict[str, dict[str, Any]] = {
    # CPU-sized: minutes on 2 cores, trained on 8,000 test-split images.
    "ci": {"model": "multiscale", "hidden": 32, "scales": 3, "checker": 2, "channel": 2,
           "steps": 400, "batch_size": 64, "lr": 2e-3, "eval_every": 200, "eval_size": 500,
           "dequant": "uniform", "checkpoint_every": 100},
    # GPU-sized: the 60,000 training images, ~210 epochs of batch 128.
    "full": {"model": "multiscale", "hidden": 64, "scales": 3, "checker": 3, "channel": 3,
             "steps": 100_000, "batch_size": 128, "lr": 1e-3, "eval_every": 2000,
             "eval_size": 10_000, "dequant": "variational", "checkpoint_every": 2000},
}


def build_image_model(name: str, hidden: int, scales: int = 3, checker: int = 3,
                      channel: int = 3) -> tuple[FlowModel, dict[str, Any]]:
    """``(model, spec)`` for ``"tiny"`` (the lecture's dense RealNVP) or ``"multiscale"``."""
    from nfcourse.models import build_model

    if name == "tiny":
        spec = {"name": "tiny_realnvp", "kwargs": {"hidden": hidden}}
    elif name == "multiscale":
        spec = {"name": "multiscale_realnvp", "kwargs": {"hidden": hidden, "scales": scales,
                                                         "checker": checker,
                                                         "channel": channel}}
    else:
        raise ValueError(f"unknown image model {name!r}; choose tiny or multiscale.")
    return build_model(spec), spec


def add_train_mnist_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=("auto", "ci", "full"), default="auto",
                   help="size preset and data split: ci = 8,000/2,000 of the test split on a "
                        "CPU; full = 60,000 train / 10,000 test (default: full with CUDA)")
    p.add_argument("--model", choices=("tiny", "multiscale"), default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="global batch")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--dequant", choices=("uniform", "variational"), default=None)
    p.add_argument("--data-dir", default=None, help="MNIST IDX directory (default: "
                   "$NFCOURSE_MNIST_DIR, then the download cache)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads per process")
    p.add_argument("--out", default="checkpoints/mnist.pt", help="checkpoint file")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main_train_mnist(args: argparse.Namespace) -> int:
    """``python -m nfcourse train mnist``; under torchrun it joins the process group."""
    from nfcourse.core.seeding import seed_everything
    from nfcourse.data.mnist import MnistError, mnist_train_test
    from nfcourse.profiles import active_profile

    profile = active_profile({"NFCOURSE_PROFILE": args.profile})
    preset = dict(PRESETS[profile.name])
    for key in ("model", "hidden", "steps", "batch_size", "lr", "eval_every",
                "checkpoint_every", "dequant"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    for key in ("hidden", "steps", "batch_size", "eval_every", "checkpoint_every"):
        if preset[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be a positive integer, got "
                             f"{preset[key]}.")
    if args.threads:
        torch.set_num_threads(args.threads)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = profile.device
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    try:
        rank, world = _world()
        try:
            data = mnist_train_test(profile.is_full, args.data_dir, seed=args.seed)
        except MnistError as err:
            print(f"nfcourse train mnist: error: {err}", file=sys.stderr)
            return 2
        seed_everything(args.seed)
        model, spec = build_image_model(preset["model"], preset["hidden"],
                                        preset.get("scales", 3), preset.get("checker", 3),
                                        preset.get("channel", 3))
        deq = VariationalDequantizer() if preset["dequant"] == "variational" else None
        spec = {**spec, "dequant": preset["dequant"], "data": data.description}
        config = TrainConfig(steps=preset["steps"], batch_size=preset["batch_size"],
                             lr=preset["lr"], warmup=min(1000, preset["steps"] // 10),
                             eval_every=preset["eval_every"], eval_size=preset["eval_size"],
                             seed=args.seed, checkpoint_every=preset["checkpoint_every"],
                             weight_decay=0.0)
        if rank == 0:
            print(f"nfcourse train mnist: profile {profile.name}, {world} process(es), "
                  f"{preset['model']} model, {preset['dequant']} dequantisation; "
                  f"{data.description}.", flush=True)
        history = train_images(model.to(device), data.train, config, eval_images=data.test,
                               dequantizer=deq.to(device) if deq is not None else None,
                               checkpoint=args.out, resume=args.resume, model_spec=spec,
                               progress=False if args.quiet else None)
        if rank == 0:
            print(f"trained {history.steps_done} steps in {history.wall_time:.1f} s; held-out "
                  f"bits/dim {history.final_eval_nll:.4f} on {len(data.test):,} images (best "
                  f"{history.best_eval_nll:.4f} at step {history.best_step}); checkpoint: "
                  f"{args.out}", flush=True)
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def load_image_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
                     ) -> tuple[FlowModel, nn.Module | None, dict[str, Any]]:
    """Rebuild ``(model, dequantizer or None, checkpoint)`` from a ``train mnist`` file."""
    ckpt = load_checkpoint(path, map_location)
    spec = ckpt["model_spec"]
    from nfcourse.models import build_model
    model = build_model({"name": spec["name"], "kwargs": spec["kwargs"]})
    deq = VariationalDequantizer() if spec.get("dequant") == "variational" else None
    objective = ImageObjective(model, deq)
    objective.load_state_dict(ckpt["objective"])
    return model.eval(), deq, ckpt

