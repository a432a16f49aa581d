"""Command line: ``python -m nfcourse <command> ...`` (also installed as ``nfcourse``).

Commands:
    ``train``        train a 2-D flow on a 2-D data set and write a checkpoint;
    ``evaluate``     load a checkpoint and report its test NLL (and, on moons, its KL gap);
    ``train-mnist``  (also ``train mnist``) train an MNIST flow, under torchrun too (chapter 5).

Each command is an entry of :data:`COMMANDS` (name -> (help, add its arguments, run it)). All
training goes through :func:`nfcourse.training.engine.fit`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

AddArgs = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


# --------------------------------------------------------------------------- train


def _train_args(p: argparse.ArgumentParser) -> None:
    from nfcourse.models import TWO_D_MODELS
    from nfcourse.data.toy2d import DATASETS_2D
    from nfcourse.flows.coupling import MASK_KINDS

    p.add_argument("--data", required=True, choices=sorted(DATASETS_2D),
                   help="2-D data set (fresh samples every step)")
    p.add_argument("--model", default="realnvp", choices=TWO_D_MODELS)
    p.add_argument("--layers", type=_positive_int, default=8, help="coupling layers")
    p.add_argument("--hidden", type=_positive_int, default=64, help="hidden units per layer")
    p.add_argument("--masks", default="halves", choices=MASK_KINDS,
                   help="'lecture' reproduces the lecture's non-alternating split")
    p.add_argument("--steps", type=_positive_int, default=4000)
    p.add_argument("--batch-size", type=_positive_int, default=1024)
    p.add_argument("--lr", type=_positive_float, default=2e-3)
    p.add_argument("--eval-every", type=_positive_int, default=500)
    p.add_argument("--checkpoint-every", type=_positive_int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _train(args: argparse.Namespace) -> int:
    import torch

    from nfcourse.core.seeding import seed_everything
    from nfcourse.models import build_model
    from nfcourse.data.toy2d import get_sampler
    from nfcourse.training.engine import TrainConfig, fit

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = {"name": args.model, "kwargs": {"features": 2, "layers": args.layers,
                                           "hidden": args.hidden, "masks": args.masks}}
    seed_everything(args.seed)
    model = build_model(spec)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         eval_every=args.eval_every, seed=args.seed,
                         warmup=min(200, args.steps // 10),
                         checkpoint_every=args.checkpoint_every)
    history = fit(model, get_sampler(args.data), config, checkpoint=args.out,
                  resume=args.resume, model_spec={**spec, "data": args.data},
                  progress=False if args.quiet else None)
    print(f"trained {args.model} ({args.layers} layers, {args.hidden} hidden) on {args.data} "
          f"for {history.steps_done} steps in {history.wall_time:.1f} s; held-out NLL "
          f"{history.final_eval_loss:.4f} nats (best {history.best_eval_loss:.4f} at step "
          f"{history.best_step}); checkpoint: {args.out}")
    return 0


# --------------------------------------------------------------------------- evaluate


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="file written by `train`")
    p.add_argument("--n", type=_positive_int, default=20_000, help="test points (fresh)")
    p.add_argument("--seed", type=int, default=12345, help="seed of the test sample")


def _evaluate(args: argparse.Namespace) -> int:
    from nfcourse.training.checkpoint import load_model
    from nfcourse.data.toy2d import make_2d, score_on_moons
    from nfcourse.training.engine import evaluate_nll

    model, ckpt = load_model(args.checkpoint)
    data = ckpt["model_spec"].get("data")
    if data == "moons":
        print(score_on_moons(model.log_prob, n=args.n, seed=args.seed))
    elif data is None:
        print(f"{args.checkpoint} does not record its data set; cannot evaluate.",
              file=sys.stderr)
        return 2
    else:
        x = make_2d(data, args.n, seed=args.seed)
        print(f"test NLL {evaluate_nll(model, x):.4f} nats on {args.n} fresh {data} points")
    return 0




# --------------------------------------------------------------------------- train mnist

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
                      channel: int = 3) -> tuple[Any, dict[str, Any]]:
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


def _mnist_preset(args: argparse.Namespace, profile_name: str) -> dict[str, Any]:
    """The profile's preset with the command line's overrides, checked."""
    preset = dict(PRESETS[profile_name])
    for key in ("model", "hidden", "steps", "batch_size", "lr", "eval_every",
                "checkpoint_every", "dequant"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    for key in ("hidden", "steps", "batch_size", "eval_every", "checkpoint_every"):
        if preset[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be a positive integer, got "
                             f"{preset[key]}.")
    return preset


def main_train_mnist(args: argparse.Namespace) -> int:
    """``python -m nfcourse train mnist``; under torchrun it joins the process group."""
    import os

    import torch
    import torch.distributed as dist

    from nfcourse.core.seeding import seed_everything
    from nfcourse.data.images import bits_per_dim
    from nfcourse.data.mnist import MnistError, mnist_train_test
    from nfcourse.flows.images import VariationalDequantizer
    from nfcourse.profiles import active_profile
    from nfcourse.training.engine import TrainConfig, rank_and_world
    from nfcourse.training.images import train_images
    from nfcourse.training.objectives import evaluate_bits_per_dim

    profile = active_profile({"NFCOURSE_PROFILE": args.profile})
    preset = _mnist_preset(args, profile.name)
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
        rank, world = rank_and_world()
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
                               dequantizer=deq, checkpoint=args.out, resume=args.resume,
                               model_spec=spec, progress=False if args.quiet else None)
        if rank == 0:
            # the run chose its weights on the first eval_size images; report on all of them
            bits, se = evaluate_bits_per_dim(model, data.test, deq)
            best = bits_per_dim(history.best_eval_loss, data.train[0].numel())
            print(f"trained {history.steps_done} steps in {history.wall_time:.1f} s; held-out "
                  f"bits/dim {bits:.4f} ± {se:.4f} on {len(data.test):,} images (best "
                  f"{best:.4f} on the first {min(config.eval_size, len(data.test)):,}, at step "
                  f"{history.best_step}); checkpoint: {args.out}", flush=True)
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()
    return 0


# name -> (help, add its arguments, run it; run returns the process exit status)
COMMANDS: dict[str, tuple[str, AddArgs, Run]] = {
    "train": ("train a flow on a 2-D data set", _train_args, _train),
    "evaluate": ("test NLL of a checkpoint", _evaluate_args, _evaluate),
    "train-mnist": ("train an MNIST flow; also spelled `train mnist` (chapter 5)",
                    add_train_mnist_args, main_train_mnist),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nfcourse", description="nfcourse command line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, return its exit status.

    Errors the user can fix (missing or corrupt checkpoint, bad values) are printed as one
    line on stderr with exit status 2, without a traceback.
    """
    from nfcourse.training.checkpoint import CheckpointError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["train", "mnist"]:  # `train mnist ...` is the image trainer
        argv = ["train-mnist", *argv[2:]]
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][2](args)
    except (FileNotFoundError, CheckpointError, ValueError) as err:
        print(f"nfcourse {args.command}: error: {err}", file=sys.stderr)
        return 2


