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

def add_train_mnist_args(p: argparse.ArgumentParser) -> None:
    from nfcourse.training.images import MNIST_PRESETS

    p.add_argument("--profile", choices=("auto", "ci", "full"), default="auto",
                   help="data split: ci = 8,000/2,000 of the test split (offline); full = "
                        "60,000 train / 10,000 test (default: full with CUDA)")
    p.add_argument("--preset", choices=sorted(MNIST_PRESETS), default=None,
                   help="what to train (default: the profile's name): ci = chapter 5's page "
                        "model, pretrained = the shipped model, glow = chapter 3's Glow, "
                        "full = GPU scale")
    p.add_argument("--model", choices=("tiny", "multiscale", "glow"), default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="global batch")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--eval-size", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--dequant", choices=("uniform", "variational"), default=None)
    p.add_argument("--data-dir", default=None, help="MNIST IDX directory (default: "
                   "$NFCOURSE_MNIST_DIR, then the download cache)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the initialisation, the batches and the noise")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seeds the ci profile's train/held-out split (0: the book's split)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per process")
    p.add_argument("--out", default="checkpoints/mnist.pt",
                   help="the run's checkpoint (resumable: optimizer, EMA, RNG state)")
    p.add_argument("--export", default=None,
                   help="when the run finishes, also write its final weights alone to this "
                        "file, with a provenance record FILE.json beside it")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--stop-at", type=int, default=None,
                   help="pause after this many steps (resume later with --resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _mnist_preset(args: argparse.Namespace, preset_name: str) -> dict[str, Any]:
    """The preset with the command line's overrides, checked."""
    from nfcourse.training.images import MNIST_PRESETS

    preset = dict(MNIST_PRESETS[preset_name])
    for key in ("model", "steps", "batch_size", "lr", "eval_every", "eval_size",
                "checkpoint_every", "dequant"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    for key in ("steps", "batch_size", "eval_every", "eval_size", "checkpoint_every"):
        if preset[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be a positive integer, got "
                             f"{preset[key]}.")
    if args.hidden is not None and args.hidden < 1:
        raise ValueError(f"--hidden must be a positive integer, got {args.hidden}.")
    return preset


def _mnist_split(full: bool, args: argparse.Namespace, command: str) -> Any:
    """The MNIST split of ``--profile`` / ``--data-dir`` / ``--split-seed``, or ``None`` after
    printing why it cannot be read (the caller exits with status 2)."""
    from nfcourse.data.mnist import MnistError, mnist_train_test

    try:
        return mnist_train_test(full, args.data_dir, seed=args.split_seed)
    except MnistError as err:
        print(f"nfcourse {command}: error: {err}", file=sys.stderr)
        return None


def main_train_mnist(args: argparse.Namespace) -> int:
    """``python -m nfcourse train mnist``; under torchrun it joins the process group."""
    import os

    import torch
    import torch.distributed as dist

    from nfcourse.core.seeding import seed_everything
    from nfcourse.data.images import bits_per_dim
    from nfcourse.profiles import active_profile
    from nfcourse.training.engine import rank_and_world
    from nfcourse.training.images import (DIVERGENCE_BITS, export_image_model, mnist_run,
                                          record_run_segment, train_images)
    from nfcourse.training.objectives import evaluate_bits_per_dim

    profile = active_profile({"NFCOURSE_PROFILE": args.profile})
    preset_name = args.preset or profile.name
    preset = _mnist_preset(args, preset_name)
    if args.threads:
        torch.set_num_threads(args.threads)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = profile.device
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    diverged = False
    try:
        rank, world = rank_and_world()
        data = _mnist_split(profile.is_full, args, "train mnist")
        if data is None:
            return 2
        seed_everything(args.seed)
        run = mnist_run(preset_name, seed=args.seed, model=preset["model"],
                        hidden=args.hidden, steps=preset["steps"],
                        batch_size=preset["batch_size"], lr=preset["lr"],
                        eval_every=preset["eval_every"], eval_size=preset["eval_size"],
                        checkpoint_every=preset["checkpoint_every"], dequant=preset["dequant"])
        model, deq, config = run.model, run.dequantizer, run.config
        spec = {**run.spec, "data": data.description}
        pixels = data.train[0].numel()
        if rank == 0:
            record_run_segment(args.out, sys.argv, args.resume)
            print(f"nfcourse train mnist: profile {profile.name}, preset {preset_name}, "
                  f"{world} process(es), {preset['model']} model, {preset['dequant']} "
                  f"dequantisation; {data.description}.", flush=True)
        history = train_images(model.to(device), data.train, config, eval_images=data.test,
                               dequantizer=deq, checkpoint=args.out, resume=args.resume,
                               model_spec=spec, stop_at=args.stop_at,
                               progress=False if args.quiet else None)
        diverged = history.diverged
        if rank == 0:
            best = bits_per_dim(history.best_eval_loss, pixels)
            if history.diverged:
                print(f"DIVERGED at step {history.diverged_step}: held-out loss rose more "
                      f"than {DIVERGENCE_BITS} bits/dim above its best ({best:.4f} at step "
                      f"{history.best_step}); the best weights were kept. Lower --lr.",
                      flush=True)
            if not history.finished:
                print(f"paused at step {history.steps_done} of {config.steps} after "
                      f"{history.wall_time:.1f} s; continue with --resume.", flush=True)
                return 0
            # the run chose its weights on the first eval_size images; report on all of them
            bits, se = evaluate_bits_per_dim(model, data.test, deq)
            print(f"trained {history.steps_done} steps in {history.wall_time:.1f} s; held-out "
                  f"bits/dim {bits:.4f} ± {se:.4f} on {len(data.test):,} images (best "
                  f"{best:.4f} on the first {min(config.eval_size, len(data.test)):,}, at step "
                  f"{history.best_step}); checkpoint: {args.out}", flush=True)
            if args.export:
                record = export_image_model(args.out, args.export, data.test, argv=sys.argv,
                                            seed=args.seed, train_size=len(data.train))
                print(f"exported {args.export} ({record['size_bytes'] / 1e6:.1f} MB, sha256 "
                      f"{record['sha256'][:12]}...) and its provenance {args.export}.json",
                      flush=True)
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()
    return 1 if diverged else 0


# --------------------------------------------------------------------------- train classifier


def _train_classifier_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=("auto", "ci", "full"), default="auto",
                   help="data split, as for `train mnist`")
    p.add_argument("--steps", type=_positive_int, default=3000)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--lr", type=_positive_float, default=2e-3)
    p.add_argument("--data-dir", default=None, help="MNIST IDX directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--threads", type=_positive_int, default=None)
    p.add_argument("--out", required=True, help="weights file (provenance in OUT.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _train_classifier(args: argparse.Namespace) -> int:
    """``python -m nfcourse train classifier``: the digit classifier that scores samples."""
    import hashlib
    import json
    from pathlib import Path

    import torch

    from nfcourse.core.seeding import seed_everything
    from nfcourse.metrics.samples import ClassificationObjective, DigitClassifier, accuracy
    from nfcourse.profiles import active_profile
    from nfcourse.training.checkpoint import save_checkpoint
    from nfcourse.training.engine import TrainConfig, fit
    from nfcourse.training.images import _git_commit, machine_description

    if args.threads:
        torch.set_num_threads(args.threads)
    profile = active_profile({"NFCOURSE_PROFILE": args.profile})
    data = _mnist_split(profile.is_full, args, "train classifier")
    if data is None:
        return 2
    seed_everything(args.seed)
    classifier = DigitClassifier()
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         warmup=min(100, args.steps // 10), eval_every=max(1, args.steps // 6),
                         eval_size=len(data.test), weight_decay=1e-4, seed=args.seed)
    history = fit(ClassificationObjective(classifier), (data.train, data.train_labels), config,
                  eval_data=(data.test, data.test_labels),
                  progress=False if args.quiet else None)
    acc = accuracy(classifier, data.test, data.test_labels)
    save_checkpoint(args.out, {"model_spec": {"name": "digit_classifier", "kwargs": {}},
                               "model": classifier.state_dict()})
    blob = Path(args.out).read_bytes()
    record = {"command": "python -m nfcourse " + " ".join(sys.argv[1:]),
              "commit": _git_commit(), "data": data.description, "seed": args.seed,
              "steps": args.steps, "batch_size": args.batch_size,
              "wall_time_s": history.wall_time, "machine": machine_description(),
              "held_out_accuracy": acc, "held_out_images": len(data.test),
              "size_bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    Path(args.out + ".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"trained the digit classifier for {args.steps} steps in {history.wall_time:.1f} s; "
          f"held-out accuracy {acc:.4f} on {len(data.test):,} images; weights: {args.out}")
    return 0


# name -> (help, add its arguments, run it; run returns the process exit status)
COMMANDS: dict[str, tuple[str, AddArgs, Run]] = {
    "train": ("train a flow on a 2-D data set", _train_args, _train),
    "evaluate": ("test NLL of a checkpoint", _evaluate_args, _evaluate),
    "train-mnist": ("train an MNIST flow; also spelled `train mnist` (chapter 5)",
                    add_train_mnist_args, main_train_mnist),
    "train-classifier": ("train the digit classifier that scores samples; also spelled "
                         "`train classifier` (chapter 5)", _train_classifier_args,
                         _train_classifier),
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
    if argv[:2] in (["train", "mnist"], ["train", "classifier"]):  # `train mnist ...`
        argv = [f"train-{argv[1]}", *argv[2:]]
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][2](args)
    except (FileNotFoundError, CheckpointError, ValueError) as err:
        print(f"nfcourse {args.command}: error: {err}", file=sys.stderr)
        return 2


