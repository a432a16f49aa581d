"""A reusable maximum-likelihood training loop for density models.

``fit(model, data, config)`` minimises the mean negative log-likelihood with AdamW, a
warm-up + cosine learning-rate schedule and gradient-norm clipping; it evaluates the NLL on a
held-out set, can stop early, shows a tqdm bar (quiet under ``CI`` or ``TQDM_DISABLE=1``) and
writes checkpoints from which training resumes *exactly*: ``N`` steps, save, load, ``N`` more
steps gives bit-for-bit the same weights as ``2N`` steps in one go, because the checkpoint
holds the model, optimiser, scheduler, the data generator's state and the global RNG state.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from nfcourse.training.checkpoint import load_checkpoint, save_checkpoint
from nfcourse.core.validation import check_tensor, validation

Sampler = Callable[[int, torch.Generator], Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`fit`.

    Attributes:
        steps: total optimiser steps (the schedule is laid out over all of them).
        batch_size: points per step.
        lr: peak learning rate; weight_decay: AdamW's decoupled weight decay.
        warmup: steps of linear warm-up before the cosine decay to ``lr * min_lr_ratio``.
        schedule: ``"cosine"`` or ``"constant"`` (after warm-up).
        clip_grad: clip the global gradient norm to this value (``None``: no clipping).
        eval_every: evaluate the held-out NLL every this many steps (and at the last step).
        eval_size: held-out points drawn from a sampler when no ``eval_data`` is given.
        patience: stop after this many evaluations without improving the best held-out NLL by
            ``min_delta`` (``None``: never stop early).
        restore_best: at the end, load the weights with the best held-out NLL.
        seed: seeds the data stream (and the held-out set); the model's own initialisation is
            the caller's business (``nfcourse.core.seeding.seed_everything`` before building it).
        checkpoint_every: write the checkpoint every this many steps (and always at the end).
    """

    steps: int = 5000
    batch_size: int = 1024
    lr: float = 2e-3
    weight_decay: float = 1e-5
    warmup: int = 200
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    clip_grad: float | None = 5.0
    eval_every: int = 500
    eval_size: int = 8192
    patience: int | None = None
    min_delta: float = 0.0
    restore_best: bool = True
    seed: int = 0
    checkpoint_every: int | None = None

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "eval_every", "eval_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"TrainConfig.lr must be a finite number > 0, got {self.lr}.")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"TrainConfig.schedule must be 'cosine' or 'constant', got "
                             f"{self.schedule!r}.")
        if self.warmup < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("TrainConfig: warmup must be >= 0 and min_lr_ratio in [0, 1].")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"TrainConfig.clip_grad must be > 0 or None, got {self.clip_grad}.")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"TrainConfig.patience must be >= 1 or None, got {self.patience}.")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError("TrainConfig.checkpoint_every must be >= 1 or None.")


@dataclass
class History:
    """What happened during :func:`fit`.

    ``train_loss[i]`` is the batch NLL (nats) at step ``i + 1``; ``eval_steps``/``eval_nll`` the
    held-out NLL at those steps; ``lr`` the learning rate used at each step; ``wall_time`` the
    seconds spent training, summed over resumed runs.
    """

    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_nll: list[float] = field(default_factory=list)
    best_step: int = 0
    best_eval_nll: float = math.inf
    wall_time: float = 0.0
    stopped_early: bool = False
    finished: bool = False

    @property
    def steps_done(self) -> int:
        return len(self.train_loss)

    @property
    def final_eval_nll(self) -> float:
        return self.eval_nll[-1] if self.eval_nll else math.nan


class CosineWithWarmup:
    """Learning-rate multiplier: linear warm-up, then cosine (or flat) down to ``floor``.

    A class rather than a lambda so ``LambdaLR.state_dict()`` can store it as plain numbers.
    """

    def __init__(self, steps: int, warmup: int, floor: float, cosine: bool) -> None:
        self.steps, self.warmup, self.floor, self.cosine = steps, warmup, floor, cosine

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if not self.cosine:
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


def progress_disabled(env: dict[str, str] | None = None) -> bool:
    """True when the environment asks for quiet output: ``CI`` set, or ``TQDM_DISABLE=1``."""
    env = os.environ if env is None else env
    ci = env.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return ci or env.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes")


@torch.no_grad()
def evaluate_nll(model: nn.Module, x: Tensor, batch: int = 8192) -> float:
    """Mean NLL (nats) of ``model.log_prob`` over ``x: [N, *event]``, in chunks, eval mode."""
    was_training = model.training
    model.eval()
    try:
        total = sum(float(-model.log_prob(part).double().sum())  # type: ignore[operator]
                    for part in x.split(batch))
    finally:
        model.train(was_training)
    return total / x.shape[0]


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class _Batches:
    """The training data stream: fresh points from a sampler, or random rows of a tensor.

    Either way every batch comes from one ``torch.Generator``, whose state is all a checkpoint
    needs to continue the stream exactly. Rows of a tensor are drawn with replacement.
    """

    def __init__(self, data: Tensor | Sampler, batch_size: int, seed: int) -> None:
        self.data, self.batch_size = data, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> Tensor:
        if callable(self.data):
            return self.data(self.batch_size, self.generator)
        idx = torch.randint(0, self.data.shape[0], (self.batch_size,), generator=self.generator)
        return self.data[idx]


def _held_out(data: Tensor | Sampler, eval_data: Tensor | None, config: TrainConfig) -> Tensor:
    if eval_data is not None:
        return eval_data
    if callable(data):
        # A separate stream, so the held-out points are never training points.
        g = torch.Generator().manual_seed(config.seed + 1_000_003)
        return data(config.eval_size, g)
    raise ValueError("fit: with a fixed training tensor, pass eval_data= (a held-out tensor); "
                     "evaluating on the training data would hide overfitting.")


def _check_data(x: object, model: nn.Module, what: str) -> Tensor:
    shape = getattr(model, "event_shape", None)
    return check_tensor(x, shape, name=f"fit: {what}")


def fit(model: nn.Module, data: Tensor | Sampler, config: TrainConfig | None = None, *,
        eval_data: Tensor | None = None, checkpoint: str | os.PathLike[str] | None = None,
        resume: bool = False, stop_at: int | None = None,
        model_spec: dict[str, Any] | None = None, progress: bool | None = None) -> History:
    """Train ``model`` (anything with ``log_prob: [B, *event] -> [B]``) by maximum likelihood.

    Args:
        model: trained in place, on whatever device it lives on.
        data: a sampler ``(n, generator) -> [n, *event]`` (a fresh batch every step: no
            overfitting possible) or a tensor ``[N, *event]`` of training points.
        config: hyper-parameters (:class:`TrainConfig`).
        eval_data: held-out points; with a sampler, ``config.eval_size`` fresh points are
            drawn instead.
        checkpoint: path of the checkpoint to write (every ``config.checkpoint_every`` steps,
            when stopping, and at the end).
        resume: continue from ``checkpoint`` (which must exist and have the same config).
        stop_at: pause after this many total steps (the schedule still spans ``config.steps``);
            resuming later continues the same run.
        model_spec: how to rebuild the model (``{"name": ..., "kwargs": ...}``), stored in the
            checkpoint for :func:`nfcourse.training.checkpoint.load_model`.
        progress: show a tqdm bar; ``None`` decides from the environment.
    Returns:
        the :class:`History` (``finished`` is False if ``stop_at`` paused the run).
    Raises:
        FloatingPointError if the loss becomes NaN or infinite.
    """
    config = config or TrainConfig()
    device = _model_device(model)
    held_out = _check_data(_held_out(data, eval_data, config), model, "eval_data").to(device)
    if not callable(data):
        _check_data(data, model, "training data")
    batches = _Batches(data, config.batch_size, config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, CosineWithWarmup(
        config.steps, config.warmup, config.min_lr_ratio, config.schedule == "cosine"))
    history = History()
    bad_evals = 0
    best_state: dict[str, Tensor] | None = None

    if resume:
        if checkpoint is None:
            raise ValueError("fit(resume=True) needs checkpoint= (the file to resume from).")
        ckpt = load_checkpoint(checkpoint, map_location=device)
        _check_same_config(ckpt, config, checkpoint)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        batches.generator.set_state(ckpt["rng"]["data"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        history = History(**ckpt["history"])
        bad_evals = int(ckpt["bad_evals"])
        best_state = ckpt["best_model"]

    def save() -> None:
        if checkpoint is None:
            return
        save_checkpoint(checkpoint, {
            "model_spec": model_spec, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": {"data": batches.generator.get_state(), "torch": torch.get_rng_state()},
            "config": asdict(config), "history": asdict(history), "bad_evals": bad_evals,
            "best_model": best_state})

    last = config.steps if stop_at is None else min(stop_at, config.steps)
    quiet = progress_disabled() if progress is None else not progress
    bar = tqdm(total=config.steps, initial=history.steps_done, disable=quiet, desc="train",
               unit="step", dynamic_ncols=True)
    started = time.perf_counter()
    model.train()
    first = True
    try:
        while not history.finished and history.steps_done < last:
            x = batches.next()
            if first:  # validate the stream once; inside the loop checks would cost a sync each
                _check_data(x, model, "a training batch")
                first = False
            lr = opt.param_groups[0]["lr"]
            with validation(False):
                loss = model.nll(x.to(device))  # type: ignore[operator]
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"fit: the training loss is {value} at step {history.steps_done + 1}; "
                    "lower the learning rate, tighten clip_grad, or bound the flow's scales.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            opt.step()
            sched.step()
            history.train_loss.append(value)
            history.lr.append(lr)
            step = history.steps_done
            bar.update(1)
            if step % config.eval_every == 0 or step == config.steps:
                nll = evaluate_nll(model, held_out)
                history.eval_steps.append(step)
                history.eval_nll.append(nll)
                if nll < history.best_eval_nll - config.min_delta:
                    history.best_eval_nll, history.best_step, bad_evals = nll, step, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    bad_evals += 1
                bar.set_postfix(loss=f"{value:.3f}", eval=f"{nll:.3f}")
                if config.patience is not None and bad_evals >= config.patience:
                    history.stopped_early = True
            if step == config.steps or history.stopped_early:
                history.finished = True
                if config.restore_best and best_state is not None:
                    _restore_weights(model, best_state)
            elif config.checkpoint_every and step % config.checkpoint_every == 0:
                history.wall_time += time.perf_counter() - started
                started = time.perf_counter()
                save()
    finally:
        bar.close()
    history.wall_time += time.perf_counter() - started
    save()
    return history


def _restore_weights(model: nn.Module, state: dict[str, Any]) -> None:
    """Load the best weights from ``state`` but keep counters a module keeps as extra state
    (e.g. the KL warm-up of ``ELBOObjective``) at their current values: restoring the best
    weights does not rewind how many steps were taken."""
    current = model.state_dict()
    extra = {k: v for k, v in current.items() if k.endswith("_extra_state")}
    model.load_state_dict({**state, **extra})


def _check_same_config(ckpt: dict[str, Any], config: TrainConfig,
                       path: str | os.PathLike[str]) -> None:
    saved = ckpt.get("config", {})
    diff = [f.name for f in fields(config) if saved.get(f.name) != getattr(config, f.name)]
    if diff:
        raise ValueError(f"cannot resume from {Path(path)}: it was trained with a different "
                         f"config ({', '.join(f'{n}={saved.get(n)!r} vs {getattr(config, n)!r}' for n in diff)}). "
                         "Resume with the same TrainConfig, or start a new run (resume=False).")
