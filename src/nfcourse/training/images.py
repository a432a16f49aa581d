"""Training flows on 8-bit images: :func:`train_images` builds the dequantisation ELBO
(:class:`~nfcourse.training.objectives.ImageELBO`) and calls the one training loop,
:func:`nfcourse.training.engine.fit` (DDP under torchrun, exact resume, early stopping and
restore-best included). :func:`load_image_model` reads back what it wrote. The command line,
``python -m nfcourse train mnist``, is in :mod:`nfcourse.cli`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nfcourse.core.model import FlowModel
from nfcourse.data.images import check_pixels
from nfcourse.training.checkpoint import load_checkpoint
from nfcourse.training.engine import History, TrainConfig, fit
from nfcourse.training.objectives import ImageELBO


# What `train mnist --preset NAME` (and chapter 5) trains; the data split is the profile's.
# "model_kwargs" / "dequant_kwargs" name the layouts in nfcourse.models.
MNIST_PRESETS: dict[str, dict[str, Any]] = {
    # chapter 5's model trained on the page: minutes on 2 CPU cores
    "ci": {"model": "multiscale", "model_kwargs": "PAGE", "dequant": "variational",
           "dequant_kwargs": "PAGE", "steps": 600, "batch_size": 64, "lr": 3e-3,
           "warmup": 60, "ema": None, "eval_every": 100, "eval_size": 500,
           "checkpoint_every": 100},
    # the shipped pretrained model: about an hour in the background on one CPU thread
    "pretrained": {"model": "multiscale", "model_kwargs": "RECIPE", "dequant": "variational",
                   "dequant_kwargs": "RECIPE", "steps": 3600, "batch_size": 64, "lr": 1.5e-3,
                   "warmup": 200, "ema": 0.999, "eval_every": 200, "eval_size": 500,
                   "checkpoint_every": 50},
    # chapter 3's Glow on MNIST: the pretrained recipe with Glow steps (models.MNIST_GLOW)
    "glow": {"model": "glow", "model_kwargs": "GLOW", "dequant": "variational",
             "dequant_kwargs": "RECIPE", "steps": 2400, "batch_size": 64, "lr": 1.5e-3,
             "warmup": 200, "ema": 0.999, "eval_every": 200, "eval_size": 500,
             "checkpoint_every": 50},
    # the same recipe at GPU scale on the 60,000 training images (~130 epochs of batch 128)
    "full": {"model": "multiscale", "model_kwargs": "RECIPE", "dequant": "variational",
             "dequant_kwargs": "RECIPE", "steps": 60_000, "batch_size": 128, "lr": 1e-3,
             "warmup": 1000, "ema": 0.999, "eval_every": 2000, "eval_size": 10_000,
             "checkpoint_every": 2000},
}
# a run whose held-out loss rises this many bits/dim above its best stops and says so
DIVERGENCE_BITS = 0.5


@dataclass
class MnistRun:
    """What one MNIST run trains: the flow, its dequantiser (``None``: uniform), the
    :class:`TrainConfig` and the ``model_spec`` a checkpoint stores."""

    model: FlowModel
    dequantizer: nn.Module | None
    config: TrainConfig
    spec: dict[str, Any]


def mnist_run(preset: str = "ci", *, seed: int = 0, pixels: int = 784,
              **overrides: Any) -> MnistRun:
    """Build the model, dequantiser and config of ``preset`` (a key of :data:`MNIST_PRESETS`).

    ``overrides`` replace preset entries (``steps``, ``batch_size``, ``lr``, ``eval_every``,
    ``eval_size``, ``checkpoint_every``, ``model`` = ``"tiny"`` / ``"multiscale"`` / ``"glow"``,
    ``dequant`` = ``"uniform"`` / ``"variational"``, ``hidden``); ``None`` keeps the
    preset's. The recipe: AdamW without weight decay, warm-up then cosine decay, gradient
    norm clipped at 1, divergence detection at :data:`DIVERGENCE_BITS`. Call
    ``seed_everything`` first: the networks initialise from the global RNG.
    """
    from nfcourse.flows.images import VariationalDequantizer
    from nfcourse.models import (MNIST_DEQUANTIZER, MNIST_GLOW, MNIST_PAGE,
                                 MNIST_PAGE_DEQUANTIZER, MNIST_RECIPE, build_model)

    if preset not in MNIST_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(MNIST_PRESETS)}.")
    p = {**MNIST_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    hidden = p.pop("hidden", None)
    if p["model"] == "tiny":
        spec: dict[str, Any] = {"name": "tiny_realnvp", "kwargs": {}}
    elif p["model"] in ("multiscale", "glow"):
        # the preset's layout if it is one of this model's, else the model's large one
        name, layouts = {"multiscale": ("multiscale_realnvp", {"PAGE": MNIST_PAGE,
                                                                "RECIPE": MNIST_RECIPE}),
                         "glow": ("multiscale_glow", {"GLOW": MNIST_GLOW})}[p["model"]]
        layout = layouts.get(p["model_kwargs"], list(layouts.values())[-1])
        spec = {"name": name, "kwargs": dict(layout)}
    else:
        raise ValueError(f"unknown image model {p['model']!r}; choose tiny, multiscale or "
                         "glow.")
    if hidden is not None:
        spec["kwargs"]["hidden"] = int(hidden)
    deq_kwargs = None
    if p["dequant"] == "variational":
        deq_kwargs = dict(MNIST_PAGE_DEQUANTIZER if p["dequant_kwargs"] == "PAGE"
                          else MNIST_DEQUANTIZER)
    elif p["dequant"] != "uniform":
        raise ValueError(f"dequant must be 'uniform' or 'variational', got {p['dequant']!r}.")
    model = build_model(spec)
    deq = VariationalDequantizer(**deq_kwargs) if deq_kwargs is not None else None
    config = TrainConfig(steps=p["steps"], batch_size=p["batch_size"], lr=p["lr"],
                         warmup=min(p["warmup"], p["steps"] // 10), eval_every=p["eval_every"],
                         eval_size=p["eval_size"], seed=seed,
                         checkpoint_every=p["checkpoint_every"], weight_decay=0.0,
                         clip_grad=1.0, ema=p["ema"],
                         divergence=DIVERGENCE_BITS * pixels * math.log(2))
    spec = {**spec, "dequant": p["dequant"], "dequant_kwargs": deq_kwargs, "preset": preset}
    return MnistRun(model, deq, config, spec)  # type: ignore[arg-type]


def train_images(model: FlowModel, train: Tensor, config: TrainConfig | None = None, *,
                 eval_images: Tensor, dequantizer: nn.Module | None = None,
                 checkpoint: str | os.PathLike[str] | None = None, resume: bool = False,
                 stop_at: int | None = None, model_spec: dict[str, Any] | None = None,
                 progress: bool | None = None, init_actnorm: int = 512,
                 on_eval: Callable[[History], None] | None = None,
                 levels: int = 256) -> History:
    """Train ``model`` (and a variational ``dequantizer``) on integer images by max. likelihood.

    Args:
        model: a density on ``y`` in ``[0, 1)^D`` (e.g. :func:`nfcourse.models.tiny_realnvp`).
        train, eval_images: disjoint uint8 images ``[N, C, H, W]``; the first
            ``config.eval_size`` held-out images are scored at every evaluation.
        config, checkpoint, resume, stop_at, model_spec, progress, on_eval: as in
            :func:`nfcourse.training.engine.fit`.
        init_actnorm: training images used to initialise the ActNorms (before training).
        levels: grey levels of the images (256; 17 for scikit-learn's 8x8 digits).
    Returns:
        :class:`History` in nats per image (``bits_per_dim(value, C * H * W)`` converts).
    """
    check_pixels(train, "train images", levels)
    check_pixels(eval_images, "eval images", levels)
    config = config or TrainConfig()
    device = next(model.parameters()).device
    objective = ImageELBO(model, dequantizer.to(device) if dequantizer is not None else None,
                          levels=levels)
    objective.initialize_actnorms(train, config.seed + 7, init_actnorm)
    return fit(objective, train, config, eval_data=eval_images, checkpoint=checkpoint,
               resume=resume, stop_at=stop_at, model_spec=model_spec, progress=progress,
               on_eval=on_eval)


def load_image_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
                     ) -> tuple[FlowModel, nn.Module | None, dict[str, Any]]:
    """Rebuild ``(model, dequantizer or None, checkpoint)`` from a ``train mnist`` file: a
    run's checkpoint or an exported one (:func:`export_image_model`), in eval mode."""
    from nfcourse.flows.images import VariationalDequantizer
    from nfcourse.models import build_model

    ckpt = load_checkpoint(path, map_location)
    spec = ckpt["model_spec"]
    model = build_model({"name": spec["name"], "kwargs": spec["kwargs"]})
    deq = (VariationalDequantizer(**(spec.get("dequant_kwargs") or {}))
           if spec.get("dequant") == "variational" else None)
    ImageELBO(model, deq).load_state_dict(ckpt["objective"])
    if deq is not None:
        deq.eval()
    return model.eval(), deq, ckpt


# The files the book ships (weights with their provenance): src/nfcourse/pretrained/.
PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"


def pretrained_file(name: str) -> Path:
    """Path of a file the book ships in ``nfcourse/pretrained`` (e.g. ``mnist_multiscale.pt``)."""
    path = PRETRAINED_DIR / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: nfcourse ships its pretrained models in {PRETRAINED_DIR}. "
            "Install nfcourse from a full clone of the repository, or make the file yourself "
            "with the command in its provenance (chapter 5).")
    return path


def load_digit_classifier(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """``(classifier, provenance)`` from a ``train classifier`` file and its ``.json``."""
    import json
    from pathlib import Path

    from nfcourse.metrics.samples import DigitClassifier

    ckpt = load_checkpoint(path)
    if ckpt.get("model_spec", {}).get("name") != "digit_classifier":
        raise ValueError(f"{path} is not a digit classifier (written by `python -m nfcourse "
                         "train classifier`).")
    classifier = DigitClassifier()
    classifier.load_state_dict(ckpt["model"])
    record = Path(str(path) + ".json")
    return classifier.eval(), json.loads(record.read_text()) if record.exists() else {}


def _git_commit() -> str:
    """The commit of the working tree (``+dirty`` if it has uncommitted changes), or
    ``"unknown"`` outside a git checkout."""
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def machine_description() -> dict[str, Any]:
    """Where a run happened: CPU, cores, torch threads, GPU (if any), torch and Python."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "python": platform.python_version(),
            "system": platform.platform()}


def record_run_segment(run: str | os.PathLike[str], argv: list[str], resume: bool) -> None:
    """Append this invocation (time, commit, command, machine) to ``run + ".runs.json"``, the
    log of a resumable run's segments that :func:`export_image_model` copies into the
    provenance (a fresh run starts a new log)."""
    import json
    from datetime import datetime, timezone
    from pathlib import Path

    log = Path(str(run) + ".runs.json")
    runs = json.loads(log.read_text()) if resume and log.exists() else []
    runs.append({"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "commit": _git_commit(), "command": "python -m nfcourse " + " ".join(argv[1:]),
                 "machine": machine_description()})
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(json.dumps(runs, indent=2) + "\n")


def export_image_model(run: str | os.PathLike[str], out: str | os.PathLike[str],
                       held_out: Tensor, *, train_size: int, argv: list[str], seed: int,
                       eval_seed: int = 0) -> dict[str, Any]:
    """Write the final weights of the ``train mnist`` run ``run`` alone (no optimizer, no
    history: a few MB) to ``out``, and its provenance to ``out + ".json"``.

    The provenance records what a reader needs to reproduce and check the file: the command,
    the code's commit at export, the data split and seed, steps, epochs, training wall time,
    the machine, the held-out bits/dim with its standard error (dequantisation seed
    ``eval_seed``, which a reader re-evaluating gets exactly), the learning curve, and the
    file's size and SHA-256. Returns the provenance dict.
    """
    import hashlib
    import json
    import math
    from pathlib import Path

    from nfcourse.data.images import bits_per_dim
    from nfcourse.training.checkpoint import save_checkpoint
    from nfcourse.training.objectives import evaluate_bits_per_dim

    model, deq, ckpt = load_image_model(run)
    pixels = held_out[0].numel()
    bits, se = evaluate_bits_per_dim(model, held_out, deq, seed=eval_seed)
    hist, cfg = ckpt["history"], ckpt["config"]
    steps = len(hist["train_loss"])
    curve = {"step": hist["eval_steps"],
             "bits_per_dim": [bits_per_dim(v, pixels) for v in hist["eval_loss"]],
             "wall_time": hist.get("eval_wall_time", [])}
    log = Path(str(run) + ".runs.json")
    provenance = {
        "command": "python -m nfcourse " + " ".join(argv[1:]) if argv else "",
        "commit": _git_commit(),
        "segments": json.loads(log.read_text()) if log.exists() else [], "data": ckpt["model_spec"].get("data"), "seed": seed,
        "steps": steps, "batch_size": cfg["batch_size"],
        "train_images": train_size, "epochs": steps * cfg["batch_size"] / train_size,
        "wall_time_s": hist["wall_time"], "machine": machine_description(),
        "held_out_images": len(held_out), "eval_seed": eval_seed,
        "held_out_bits_per_dim": bits, "held_out_se": se, "diverged": hist.get("diverged"),
        "best_step": hist["best_step"], "curve": curve,
        "config": cfg, "model_spec": ckpt["model_spec"]}
    objective = {k: v.float() if v.is_floating_point() else v
                 for k, v in ckpt["objective"].items()}
    save_checkpoint(out, {"model_spec": ckpt["model_spec"], "objective": objective,
                          "provenance": {k: v for k, v in provenance.items()
                                         if k not in ("curve", "machine", "config")}})
    data = Path(out).read_bytes()
    provenance["size_bytes"] = len(data)
    provenance["sha256"] = hashlib.sha256(data).hexdigest()
    assert math.isfinite(bits)
    Path(str(out) + ".json").write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance
