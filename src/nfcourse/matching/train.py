"""The conditional flow matching (CFM) loss and one small training loop for it.

The CFM loss regresses the field on the velocity of the conditional path:

    L_CFM(theta) = E_{t ~ U[0,1], (x0, x1) ~ coupling} | v_theta(t, x_t) - u_t(x0, x1) |^2,
    x_t = alpha(t) x1 + sigma(t) x0.

Its gradient equals that of the intractable marginal loss ``E |v_theta(t, x_t) - u_t(x_t)|^2``
(``u_t(x) = E[u_t(x0, x1) | x_t = x]``), the two losses differing by a constant (Lipman et
al. 2023, Thm. 2), so they have the same minimiser.

The loop is not :func:`nfcourse.training.engine.fit`: that one maximises a likelihood and evaluates a
held-out NLL, while this is a regression with fresh noise, times and pairs at every step.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field as dc_field
from typing import Any

import torch
from torch import Tensor, nn

from nfcourse.matching.coupling import COUPLINGS, pair
from nfcourse.matching.paths import GaussianPath

Sampler = Callable[[int, torch.Generator], Tensor]


def cfm_loss(field: nn.Module, path: GaussianPath, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """Mean over the batch of ``|v(t, x_t) - u_t(x0, x1)|^2`` (summed over coordinates).

    ``x0`` (noise) and ``x1`` (data) are paired rows ``[B, D]``; ``t`` is ``[B]`` in [0, 1].
    """
    xt = path.sample(x0, x1, t)
    target = path.velocity(x0, x1, t)
    return (field(t, xt) - target).square().sum(dim=1).mean()


@dataclass
class CFMHistory:
    """Loss after every step, and the wall time of the run (seconds)."""

    losses: list[float] = dc_field(default_factory=list)
    seconds: float = 0.0

    def smoothed(self, window: int = 100) -> float:
        """Mean of the last ``window`` losses."""
        tail = self.losses[-window:]
        return sum(tail) / max(len(tail), 1)


def train_cfm(field: nn.Module, path: GaussianPath,
              data: Sampler | tuple[Tensor, Tensor], *, coupling: str = "independent",
              ot_block: int | None = None, steps: int = 2000,
              batch_size: int = 256, lr: float = 2e-3,
              generator: torch.Generator | None = None, ema: float | None = 0.999,
              batch_loss: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
              checkpoint: str | os.PathLike[str] | None = None, resume: bool = False,
              stop_at: int | None = None, model_spec: dict[str, Any] | None = None
              ) -> CFMHistory:
    """Fit ``field`` by conditional flow matching; Adam with a cosine-decayed learning rate.

    Args:
        field: ``v(t, x)`` with ``t [B]``, e.g. :class:`~nfcourse.matching.VelocityMLP`.
        path: the conditional path (noise at ``t = 0``, data at ``t = 1``).
        data: either a sampler ``(n, generator) -> [n, D]`` of data points, paired with fresh
            ``N(0, I)`` noise at every step through ``coupling``; or fixed pairs
            ``(x0 [N, D], x1 [N, D])`` (reflow), from which rows are drawn with their partners.
        coupling: ``"independent"`` (I-CFM) or ``"ot"`` (exact minibatch OT, OT-CFM); must be
            ``"independent"`` for fixed pairs, which are already coupled.
        ot_block: solve the minibatch OT in blocks of this many rows (None: the whole batch).
        ema: decay of an exponential moving average of the weights, copied into ``field`` at
            the end (``None``: keep the last iterate). Averaging removes most of the noise the
            regression's random targets leave in the weights.
        batch_loss: replaces :func:`cfm_loss` by ``batch_loss(x0, x1, t)`` (the lecture's
            variant uses this); ``path`` is then unused.
        checkpoint, resume, stop_at, model_spec: as in :func:`nfcourse.training.engine.fit`: the file
            holds the field, optimiser, schedule, generator state, EMA weights and losses, so
            pausing at ``stop_at`` and resuming gives bit-for-bit the weights of one run. With
            ``model_spec`` (e.g. ``{"name": "velocity_mlp", "kwargs": {...}}``) the finished
            field loads with :func:`nfcourse.training.checkpoint.load_model`. Other arguments must be
            the same when resuming (only the step count and ``ema`` are checked).
    """
    if coupling not in COUPLINGS:
        raise ValueError(f"train_cfm: unknown coupling {coupling!r}; choose one of "
                         f"{', '.join(COUPLINGS)}.")
    if not isinstance(steps, int) or steps < 1 or not isinstance(batch_size, int) \
            or batch_size < 2:
        raise ValueError(f"train_cfm: steps must be >= 1 and batch_size >= 2, got {steps}, "
                         f"{batch_size}.")
    if ema is not None and not 0.0 < ema < 1.0:
        raise ValueError(f"train_cfm: ema must be in (0, 1) or None, got {ema}.")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"train_cfm: lr must be a finite number > 0, got {lr}.")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    fixed = isinstance(data, tuple)
    if fixed:
        px0, px1 = data  # type: ignore[misc]
        if px0.dim() != 2 or px0.shape != px1.shape:
            raise ValueError(f"train_cfm: fixed pairs must be (x0 [N, D], x1 [N, D]), got "
                             f"{list(px0.shape)} and {list(px1.shape)}.")
        if coupling != "independent":
            raise ValueError("train_cfm: fixed pairs are already coupled; pass "
                             "coupling='independent' (re-pairing them would undo the reflow).")
    elif not callable(data):
        raise ValueError("train_cfm: data must be a sampler (n, generator) -> [n, D] or a "
                         "tuple of fixed pairs (x0, x1).")
    loss_fn = batch_loss or (lambda a, b, t: cfm_loss(field, path, a, b, t))
    opt = torch.optim.Adam(field.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)) * 0.95 + 0.05)
    hist = CFMHistory()
    params = [p for p in field.parameters() if p.requires_grad]
    avg = [p.detach().clone() for p in params] if ema is not None else []
    if resume:
        from nfcourse.training.checkpoint import load_checkpoint

        if checkpoint is None:
            raise ValueError("train_cfm(resume=True) needs checkpoint= (the file to resume).")
        ckpt = load_checkpoint(checkpoint)
        if ckpt.get("cfm") != {"steps": steps, "ema": ema}:
            raise ValueError(f"cannot resume from {checkpoint}: it was trained with "
                             f"{ckpt.get('cfm')}, not steps={steps}, ema={ema}; resume with "
                             "the same arguments or start a new run (resume=False).")
        field.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        g.set_state(ckpt["rng"])
        for a, saved in zip(avg, ckpt["ema_weights"]):
            a.copy_(saved)
        hist.losses, hist.seconds = list(ckpt["losses"]), float(ckpt["seconds"])
    last = steps if stop_at is None else min(stop_at, steps)

    def save() -> None:
        if checkpoint is None:
            return
        from nfcourse.training.checkpoint import save_checkpoint

        save_checkpoint(checkpoint, {
            "model_spec": model_spec, "model": field.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "rng": g.get_state(), "ema_weights": avg,
            "losses": hist.losses, "seconds": hist.seconds,
            "cfm": {"steps": steps, "ema": ema}})

    start = time.perf_counter()
    field.train()
    while len(hist.losses) < last:
        if fixed:
            idx = torch.randint(0, px0.shape[0], (batch_size,), generator=g)
            x0, x1 = px0[idx], px1[idx]
        else:
            x1 = data(batch_size, g)  # type: ignore[operator]
            x0 = torch.randn(x1.shape, generator=g, dtype=x1.dtype)
            x0, x1 = pair(x0, x1, coupling, ot_block)
        t = torch.rand(batch_size, generator=g, dtype=x0.dtype)
        loss = loss_fn(x0, x1, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if ema is not None:
            with torch.no_grad():
                # warm start: short runs average over roughly the last steps / 10 steps
                d = min(ema, 1.0 - 10.0 / (len(hist.losses) + 10))
                torch._foreach_lerp_(avg, [p.detach() for p in params], 1.0 - d)
        hist.losses.append(float(loss.detach()))
    finished = len(hist.losses) == steps
    if ema is not None and finished:  # a paused run keeps the iterate; the average is saved
        with torch.no_grad():
            for p, a in zip(params, avg):
                p.copy_(a)
    field.eval()
    hist.seconds += time.perf_counter() - start
    save()
    if hist.losses and not math.isfinite(hist.losses[-1]):
        raise RuntimeError("train_cfm: the loss is not finite; lower lr.")
    return hist
