"""Command line: ``python -m nfcourse <command> ...`` (also installed as ``nfcourse``).

Commands:
    ``train``     train a 2-D flow on a 2-D data set and write a checkpoint;
    ``evaluate``  load a checkpoint and report its test NLL (and, on moons, its KL gap).

Each command is an entry of :data:`COMMANDS` (name -> (add its arguments, run it)); later
chapters register their own (``train-mnist`` ...) with :func:`register_command`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

AddArgs = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, AddArgs, Run]] = {}


def register_command(name: str, help: str, add_args: AddArgs, run: Run) -> None:
    """Add a sub-command; ``run(args)`` returns the process exit status."""
    if name in COMMANDS:
        raise ValueError(f"command {name!r} is already registered.")
    COMMANDS[name] = (help, add_args, run)


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
          f"{history.final_eval_nll:.4f} nats (best {history.best_eval_nll:.4f} at step "
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


register_command("train", "train a flow on a 2-D data set", _train_args, _train)
register_command("evaluate", "test NLL of a checkpoint", _evaluate_args, _evaluate)


# --------------------------------------------------------------------------- train mnist


def _train_mnist_args(p: argparse.ArgumentParser) -> None:
    from nfcourse.training.images import add_train_mnist_args

    add_train_mnist_args(p)


def _train_mnist(args: argparse.Namespace) -> int:
    from nfcourse.training.images import main_train_mnist

    return main_train_mnist(args)


register_command("train-mnist", "train an MNIST flow; also spelled `train mnist` (chapter 5)",
                 _train_mnist_args, _train_mnist)


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


