"""The one training loop of nfcourse: ``fit(objective, data, config)``.

Every model of the book trains here: flows by maximum likelihood (2-D, vectors, images),
the VAE by its ELBO, velocity fields by conditional flow matching, and the JKO solver's maps
(see :mod:`nfcourse.training.objectives` for what an objective is). One loop gives every kind
of run the same behaviour:

* AdamW (``weight_decay=0`` is Adam) with a linear warm-up then a cosine (or constant)
  learning rate, and optional global gradient-norm clipping;
* an optional exponential moving average of the weights (``config.ema``), kept by
  ``torch.optim.swa_utils.AveragedModel``; when set, evaluation, restore-best and the final
  weights use the average;
* evaluation of ``objective.evaluate`` on ONE held-out set, fixed for the whole run, every
  ``eval_every`` steps and at the last; early stopping after ``patience`` evaluations without
  improvement; restoring the best evaluated weights at the end;
* checkpoints from which training resumes *exactly*: ``N`` steps, save, resume, ``N`` more
  steps gives bit-for-bit the weights of ``2N`` steps in one go, because the checkpoint holds
  the objective (model, dequantiser, counters such as the VAE's KL warm-up), optimiser,
  scheduler, EMA, both data-stream generators and the global RNG state;
* DDP under ``torchrun``: when a ``torch.distributed`` process group is initialised, each
  step's *global* batch (``config.batch_size`` examples, drawn from generators every rank
  seeds identically) is cut into equal shards, one per rank, and the objective is wrapped in
  ``DistributedDataParallel``, which averages the gradients of the shard means: the gradient
  of the global-batch mean. ``N`` processes take the same steps as one process (up to
  floating-point summation order). Every rank scores the whole held-out set (identical weights,
  so identical values, no collective needed); rank 0 writes checkpoints and shows the bar.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from nfcourse.core.validation import module_dtype_device, validation
from nfcourse.training.checkpoint import load_checkpoint, save_checkpoint
from nfcourse.training.objectives import MaximumLikelihood, evaluate_nll

__all__ = ["TrainConfig", "History", "CosineWithWarmup", "fit", "as_objective",
           "evaluate_nll", "progress_disabled", "rank_and_world", "check_resumable"]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`fit`.

    Attributes:
        steps: total optimiser steps (the schedule is laid out over all of them).
        batch_size: examples per step (the global batch under DDP, divisible by the number of
            processes).
        lr: peak learning rate; weight_decay: AdamW's decoupled weight decay.
        warmup: steps of linear warm-up before the cosine decay to ``lr * min_lr_ratio``.
        schedule: ``"cosine"`` or ``"constant"`` (after warm-up).
        clip_grad: clip the global gradient norm to this value (``None``: no clipping).
        ema: decay of an exponential moving average of the weights (``None``: none).
        eval_every: evaluate on the held-out set every this many steps (and at the last step).
        eval_size: the held-out set is the first ``eval_size`` rows of ``eval_data``, or that
            many points drawn once from a sampler.
        patience: stop after this many evaluations without improving the best held-out loss by
            ``min_delta`` (``None``: never stop early).
        restore_best: at the end, load the weights with the best held-out loss.
        seed: seeds the data streams (and a sampled held-out set); the model's own
            initialisation is the caller's business (``seed_everything`` before building it).
        checkpoint_every: write the checkpoint every this many steps (and always at the end).
        divergence: stop, keep the best weights and mark the run as diverged when a held-out
            loss is more than this above the best so far, or not finite (``None``: never).
    """

    steps: int = 5000
    batch_size: int = 1024
    lr: float = 2e-3
    weight_decay: float = 1e-5
    warmup: int = 200
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    clip_grad: float | None = 5.0
    ema: float | None = None
    eval_every: int = 500
    eval_size: int = 8192
    patience: int | None = None
    min_delta: float = 0.0
    restore_best: bool = True
    seed: int = 0
    checkpoint_every: int | None = None
    divergence: float | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
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
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ValueError(f"TrainConfig.ema must be in (0, 1) or None, got {self.ema}.")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"TrainConfig.patience must be >= 1 or None, got {self.patience}.")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError("TrainConfig.checkpoint_every must be >= 1 or None.")
        if self.divergence is not None and not self.divergence > 0:
            raise ValueError(f"TrainConfig.divergence must be > 0 or None, got "
                             f"{self.divergence}.")


@dataclass
class History:
    """What happened during :func:`fit`.

    Units: every loss is in the objective's own unit, the one its ``loss`` and ``evaluate``
    return: nats per point for maximum likelihood and the VAE's negative ELBO, nats per image
    for images (convert with ``nfcourse.data.images.bits_per_dim(value, C * H * W)``), the
    squared velocity error for flow matching, nats for a JKO step.

    ``train_loss[i]`` is the training batch's loss at step ``i + 1``; ``eval_steps`` /
    ``eval_loss`` the held-out loss at those steps (always on the same held-out set);
    ``lr`` the learning rate used at each step; ``wall_time`` the seconds spent training,
    summed over resumed runs, and ``eval_wall_time`` its value at each evaluation.
    ``diverged`` says the run stopped at ``diverged_step`` because a held-out loss exceeded
    the best by more than ``config.divergence`` (its weights are the best ones, not the
    diverged ones).
    """

    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    eval_wall_time: list[float] = field(default_factory=list)
    best_step: int = 0
    best_eval_loss: float = math.inf
    wall_time: float = 0.0
    stopped_early: bool = False
    finished: bool = False
    diverged: bool = False
    diverged_step: int | None = None

    @property
    def steps_done(self) -> int:
        return len(self.train_loss)

    @property
    def final_eval_loss(self) -> float:
        return self.eval_loss[-1] if self.eval_loss else math.nan

    def smoothed_loss(self, window: int = 100) -> float:
        """Mean training loss over the last ``window`` steps."""
        tail = self.train_loss[-window:]
        return sum(tail) / len(tail) if tail else math.nan


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


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def as_objective(model: nn.Module) -> nn.Module:
    """``model`` itself if it is an objective (has ``draw``, ``loss``, ``evaluate`` and
    ``model``), else :class:`~nfcourse.training.objectives.MaximumLikelihood` of it, so
    ``fit(flow, sampler, config)`` trains a density model by maximum likelihood."""
    if all(hasattr(model, name) for name in ("draw", "loss", "evaluate", "model")):
        return model
    if not callable(getattr(model, "log_prob", None)):
        raise TypeError(f"fit: {type(model).__name__} is neither an objective (draw, loss, "
                        "evaluate) nor a density model with log_prob; wrap it in an objective "
                        "from nfcourse.training.objectives.")
    return MaximumLikelihood(model)


def check_resumable(ckpt: dict[str, Any], config: TrainConfig, objective: nn.Module,
                    path: str | os.PathLike[str]) -> None:
    """Refuse to resume a run with another config or another kind of objective."""
    kind = type(objective).__name__
    if ckpt.get("objective_kind", kind) != kind:
        raise ValueError(f"cannot resume from {Path(path)}: it trained a "
                         f"{ckpt['objective_kind']}, not a {kind}. Resume with the same "
                         "objective, or start a new run (resume=False).")
    saved = ckpt.get("config", {})
    diff = [f.name for f in fields(config) if saved.get(f.name) != getattr(config, f.name)]
    if diff:
        changes = ", ".join(f"{n}={saved.get(n)!r} vs {getattr(config, n)!r}" for n in diff)
        raise ValueError(f"cannot resume from {Path(path)}: it was trained with a different "
                         f"config ({changes}). Resume with the same TrainConfig, or start a "
                         "new run (resume=False).")


def _held_out(data: Any, eval_data: Any, config: TrainConfig) -> Any:
    """The run's one held-out set: the first ``eval_size`` rows of ``eval_data``, or
    ``eval_size`` points drawn once from a sampler with a seed of their own."""
    if eval_data is not None:
        return _rows(eval_data, slice(0, config.eval_size))
    if callable(data):
        # A separate stream, so the held-out points are never training points.
        return data(config.eval_size, torch.Generator().manual_seed(config.seed + 1_000_003))
    raise ValueError("fit: with a fixed training tensor, pass eval_data= (a held-out tensor); "
                     "evaluating on the training data would hide overfitting.")


def _rows(batch: Any, rows: slice) -> Any:
    """The same rows of a tensor or of every tensor of a tuple."""
    if isinstance(batch, tuple):
        return tuple(_rows(b, rows) for b in batch)
    return batch[rows]


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, tuple):
        return tuple(_to(b, device) for b in batch)
    return batch.to(device)


def _warm_ema(decay: float) -> Callable[[list[Tensor], list[Tensor], Tensor | int], None]:
    """``multi_avg_fn`` for AveragedModel: EMA with decay ``min(decay, 1 - 10 / (n + 10))``
    after ``n`` updates. Plain ``get_ema_multi_avg_fn(decay)`` would keep the initial weights
    at weight ``decay^steps`` (13% after 2,000 steps at 0.999); the warm start averages short
    runs over roughly their last tenth instead. The weight is computed once per update, as a
    tensor (no host sync), and every parameter moves by one in-place ``lerp_``."""
    def multi_avg_fn(averaged: list[Tensor], current: list[Tensor],
                     num_averaged: Tensor | int) -> None:
        if not averaged:
            return
        n = torch.as_tensor(num_averaged, device=averaged[0].device).to(averaged[0].dtype)
        weight = 1.0 - torch.clamp(1.0 - 10.0 / (n + 10.0), max=decay)
        for a, c in zip(averaged, current):
            a.lerp_(c, weight.to(a.dtype))
    return multi_avg_fn


@contextmanager
def _averaged_weights(objective: nn.Module, ema: AveragedModel | None) -> Iterator[None]:
    """Inside: ``objective`` holds the EMA weights (when there is an EMA); restored after."""
    if ema is None:
        yield
        return
    params = list(objective.parameters())
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, a in zip(params, ema.module.parameters()):
            p.copy_(a)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def _restore_weights(objective: nn.Module, state: dict[str, Any]) -> None:
    """Load the best weights but keep extra state (e.g. the VAE's KL warm-up counter) at its
    current value: restoring the best weights does not rewind how many steps were taken."""
    extra = {k: v for k, v in objective.state_dict().items() if k.endswith("_extra_state")}
    objective.load_state_dict({**state, **extra})


class _Run:
    """The mutable state of one run: everything a checkpoint holds."""

    def __init__(self, objective: nn.Module, config: TrainConfig, device: torch.device) -> None:
        self.objective, self.config = objective, config
        params = [p for p in objective.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"fit: the {type(objective).__name__} has no trainable "
                             "parameters; unfreeze some (requires_grad_(True)).")
        self.opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, CosineWithWarmup(
            config.steps, config.warmup, config.min_lr_ratio, config.schedule == "cosine"))
        self.ema = (AveragedModel(objective, multi_avg_fn=_warm_ema(config.ema))
                    if config.ema is not None else None)
        # data picks on the CPU; noise (CFM, VAE) drawn directly on the objective's device
        self.data_gen = torch.Generator().manual_seed(config.seed)
        self.noise_gen = torch.Generator(device=device).manual_seed(config.seed + 2)
        self.history = History()
        self.bad_evals = 0
        self.best: dict[str, Tensor] | None = None

    def state(self, model_spec: dict[str, Any] | None, world: int) -> dict[str, Any]:
        o = self.objective
        return {"model_spec": model_spec, "model": o.model.state_dict(),  # type: ignore
                "objective": o.state_dict(), "objective_kind": type(o).__name__,
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "rng": {"data": self.data_gen.get_state(), "noise": self.noise_gen.get_state(),
                        "torch": torch.get_rng_state()},
                "config": asdict(self.config), "history": asdict(self.history),
                "bad_evals": self.bad_evals, "best_objective": self.best, "world_size": world}

    def load(self, ckpt: dict[str, Any]) -> None:
        self.objective.load_state_dict(ckpt["objective"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.data_gen.set_state(ckpt["rng"]["data"].cpu())
        self.noise_gen.set_state(ckpt["rng"]["noise"].cpu())
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        self.history = History(**ckpt["history"])
        self.bad_evals = int(ckpt["bad_evals"])
        self.best = ckpt["best_objective"]

    def step(self, net: nn.Module, data: Any, device: torch.device, rank: int,
             world: int) -> float:
        """One optimiser step on this rank's shard of the next global batch."""
        cfg = self.config
        batch = self.objective.draw(data, cfg.batch_size, self.data_gen,  # type: ignore
                                    self.noise_gen)
        local = cfg.batch_size // world
        mine = _to(_rows(batch, slice(rank * local, (rank + 1) * local)) if world > 1
                   else batch, device)
        with validation(False):  # the stream was checked once; per-step checks cost syncs
            loss = net(mine)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"fit: the {type(self.objective).__name__} loss is {value} at step "
                f"{self.history.steps_done + 1}; lower the learning rate, tighten clip_grad, "
                "or bound the model's scales.")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad is not None:
            nn.utils.clip_grad_norm_(self.objective.parameters(), cfg.clip_grad)
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self.ema.update_parameters(self.objective)
        return value

    def evaluate(self, held_out: Any) -> float:
        """Score the held-out set (with the EMA weights if any); track best and patience."""
        cfg, h, o = self.config, self.history, self.objective
        with _averaged_weights(o, self.ema), torch.no_grad():
            was = o.training
            o.eval()
            try:
                value = float(o.evaluate(held_out))  # type: ignore[operator]
            finally:
                o.train(was)
            better = value < h.best_eval_loss - cfg.min_delta
            if better:
                self.best = copy.deepcopy(o.state_dict())
        h.eval_steps.append(h.steps_done)
        h.eval_loss.append(value)
        if better:
            h.best_eval_loss, h.best_step, self.bad_evals = value, h.steps_done, 0
        else:
            self.bad_evals += 1
        if cfg.patience is not None and self.bad_evals >= cfg.patience:
            h.stopped_early = True
        limit = cfg.divergence
        if limit is not None and (not math.isfinite(value) or value > h.best_eval_loss + limit):
            h.diverged, h.diverged_step, h.stopped_early = True, h.steps_done, True
        return value

    def finish(self) -> None:
        """The final weights: the best evaluated ones, else the EMA, else the last iterate."""
        self.history.finished = True
        if self.config.restore_best and self.best is not None:
            _restore_weights(self.objective, self.best)
        elif self.ema is not None:
            with torch.no_grad():
                for p, a in zip(self.objective.parameters(), self.ema.module.parameters()):
                    p.copy_(a)


def fit(objective: nn.Module, data: Any, config: TrainConfig | None = None, *,
        eval_data: Any = None, checkpoint: str | os.PathLike[str] | None = None,
        resume: bool = False, stop_at: int | None = None,
        model_spec: dict[str, Any] | None = None, progress: bool | None = None,
        on_eval: Callable[[History], None] | None = None) -> History:
    """Train ``objective`` (in place, on the device it lives on) and return its History.

    Args:
        objective: an objective (:mod:`nfcourse.training.objectives`), or a density model with
            ``log_prob: [B, *event] -> [B]``, trained by maximum likelihood.
        data: what ``objective.draw`` draws batches from: for maximum likelihood and the VAE
            a sampler ``(n, generator) -> [n, *event]`` (fresh points every step) or a tensor
            ``[N, *event]`` (rows drawn with replacement); uint8 images for images; see each
            objective.
        config: hyper-parameters (:class:`TrainConfig`).
        eval_data: held-out data (its first ``config.eval_size`` rows are used); with a
            sampler and no ``eval_data``, ``config.eval_size`` fresh points are drawn once.
        checkpoint: path of the checkpoint to write (every ``config.checkpoint_every`` steps,
            when stopping, and at the end).
        resume: continue from ``checkpoint`` (same config and kind of objective).
        stop_at: pause after this many total steps (the schedule still spans ``config.steps``);
            resuming later continues the same run.
        model_spec: how to rebuild ``objective.model`` (``{"name": ..., "kwargs": ...}``), for
            :func:`nfcourse.training.checkpoint.load_model`.
        progress: show a tqdm bar; ``None`` decides from the environment.
        on_eval: called with the History after every evaluation (on rank 0), e.g. to print
            one line of progress where a bar would not render (a static page).
    Returns:
        the :class:`History` (``finished`` is False if ``stop_at`` paused the run).
    Raises:
        FloatingPointError if the loss becomes NaN or infinite.
    """
    config = config or TrainConfig()
    objective = as_objective(objective)
    rank, world = rank_and_world()
    if config.batch_size % world:
        raise ValueError(f"fit: batch_size {config.batch_size} must be divisible by the number "
                         f"of processes ({world}) so every rank gets an equal shard.")
    device = module_dtype_device(objective)[1] or torch.device("cpu")
    held_out = _to(_held_out(data, eval_data, config), device)
    run = _Run(objective, config, device)
    if resume:
        if checkpoint is None:
            raise ValueError("fit(resume=True) needs checkpoint= (the file to resume from).")
        ckpt = load_checkpoint(checkpoint, map_location=device)
        check_resumable(ckpt, config, objective, checkpoint)
        run.load(ckpt)
    net: nn.Module = objective
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(objective, device_ids=None if device.type == "cpu"
                                      else [device])

    def save() -> None:
        if checkpoint is not None and rank == 0:
            save_checkpoint(checkpoint, run.state(model_spec, world))
        if world > 1:
            dist.barrier()

    h = run.history
    last = config.steps if stop_at is None else min(stop_at, config.steps)
    quiet = (progress_disabled() if progress is None else not progress) or rank != 0
    bar = tqdm(total=config.steps, initial=h.steps_done, disable=quiet, desc="train",
               unit="step", dynamic_ncols=True)
    started = time.perf_counter()
    objective.train()
    try:
        while not h.finished and h.steps_done < last:
            lr = run.opt.param_groups[0]["lr"]
            value = run.step(net, data, device, rank, world)
            h.train_loss.append(value)
            h.lr.append(lr)
            step = h.steps_done
            bar.update(1)
            if step % config.eval_every == 0 or step == config.steps:
                held_out_loss = run.evaluate(held_out)
                h.eval_wall_time.append(h.wall_time + time.perf_counter() - started)
                bar.set_postfix(loss=f"{value:.4g}", eval=f"{held_out_loss:.4g}")
                if on_eval is not None and rank == 0:
                    on_eval(h)
            if step == config.steps or h.stopped_early:
                run.finish()
            elif config.checkpoint_every and step % config.checkpoint_every == 0:
                h.wall_time += time.perf_counter() - started
                started = time.perf_counter()
                save()
    finally:
        bar.close()
    h.wall_time += time.perf_counter() - started
    save()
    return h
