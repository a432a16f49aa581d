"""The conditional flow matching (CFM) loss, its training objective, and ``train_cfm``.

The CFM loss regresses the field on the velocity of the conditional path:

    L_CFM(theta) = E_{t ~ U[0,1], (x0, x1) ~ coupling} | v_theta(t, x_t) - u_t(x0, x1) |^2,
    x_t = alpha(t) x1 + sigma(t) x0.

Its gradient equals that of the intractable marginal loss ``E |v_theta(t, x_t) - u_t(x_t)|^2``
(``u_t(x) = E[u_t(x0, x1) | x_t = x]``), the two losses differing by a constant (Lipman et
al. 2023, Thm. 2), so they have the same minimiser.

Training is the one loop, :func:`nfcourse.training.engine.fit`, with :class:`CFMObjective`;
:func:`train_cfm` only sets the flow-matching defaults (Adam, cosine decay to 5% with no
warm-up, no clipping, an EMA of the weights) and calls it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfcourse.core.validation import module_dtype_device
from nfcourse.matching.coupling import COUPLINGS, pair
from nfcourse.matching.paths import GaussianPath
from nfcourse.training.engine import History, TrainConfig, fit

Sampler = Callable[[int, torch.Generator], Tensor]
BatchLoss = Callable[[Tensor, Tensor, Tensor], Tensor]


def cfm_loss(field: nn.Module, path: GaussianPath, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """Mean over the batch of ``|v(t, x_t) - u_t(x0, x1)|^2`` (summed over coordinates).

    ``x0`` (noise) and ``x1`` (data) are paired rows ``[B, D]``; ``t`` is ``[B]`` in [0, 1].
    The point and its target come from one :meth:`~GaussianPath.sample_and_velocity` (the
    times are range-checked while validation is on).
    """
    xt, target = path.sample_and_velocity(x0, x1, t)
    # the sum of all squares over B is the mean of the rows' sums; one fused operator
    # forward and one backward, where square-sum-mean are three of each
    return F.mse_loss(field(t, xt), target, reduction="sum") / x0.shape[0]


class CFMObjective(nn.Module):
    """Conditional flow matching of ``field`` along ``path`` as a training objective.

    ``data`` is a sampler ``(n, generator) -> [n, D]`` of data points ``x1``, each paired with
    ``N(0, I)`` noise ``x0`` through ``coupling``; or fixed pairs ``(x0 [N, D], x1 [N, D])``
    (reflow), drawn as rows with their partners. A batch is ``(x0, x1, t)``: data rows come
    from the CPU ``generator``, the noise and the times ``t ~ U[0, 1]`` are drawn on the
    field's device from ``noise_generator``, and the coupling pairs the *global* batch before
    the engine shards it. Loss: :func:`cfm_loss`, or ``batch_loss(x0, x1, t)`` when given.
    Evaluation: the same loss on held-out data with noise and times seeded by ``eval_seed``
    (the same at every evaluation), with the pairs as drawn (the independent coupling), so
    the value does not depend on the coupling's batch size.
    """

    def __init__(self, field: nn.Module, path: GaussianPath, coupling: str = "independent",
                 ot_block: int | None = None, batch_loss: BatchLoss | None = None,
                 eval_seed: int = 0) -> None:
        super().__init__()
        if coupling not in COUPLINGS:
            raise ValueError(f"CFMObjective: unknown coupling {coupling!r}; choose one of "
                             f"{', '.join(COUPLINGS)}.")
        self.field, self.path, self.coupling, self.ot_block = field, path, coupling, ot_block
        self.batch_loss, self.eval_seed = batch_loss, eval_seed

    @property
    def model(self) -> nn.Module:
        return self.field

    def _device(self) -> torch.device:
        return module_dtype_device(self.field)[1] or torch.device("cpu")

    def draw(self, data: Sampler | tuple[Tensor, Tensor], n: int, generator: torch.Generator,
             noise_generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        device = noise_generator.device
        if isinstance(data, tuple):
            idx = torch.randint(0, data[0].shape[0], (n,), generator=generator)
            x0, x1 = data[0][idx].to(device), data[1][idx].to(device)
        else:
            x1 = data(n, generator).to(device)
            x0 = torch.randn(x1.shape, generator=noise_generator, dtype=x1.dtype, device=device)
            x0, x1 = pair(x0, x1, self.coupling, self.ot_block)
        t = torch.rand(n, generator=noise_generator, dtype=x0.dtype, device=device)
        return x0, x1, t

    def loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        x0, x1, t = batch
        if self.batch_loss is not None:
            return self.batch_loss(x0, x1, t)
        return cfm_loss(self.field, self.path, x0, x1, t)

    def forward(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        return self.loss(batch)

    @torch.no_grad()
    def evaluate(self, held_out: Tensor | tuple[Tensor, Tensor]) -> float:
        g = torch.Generator(device=self._device()).manual_seed(self.eval_seed)
        if isinstance(held_out, tuple):
            x0, x1 = held_out
        else:
            x1 = held_out
            x0 = torch.randn(x1.shape, generator=g, dtype=x1.dtype, device=x1.device)
        t = torch.rand(x1.shape[0], generator=g, dtype=x1.dtype, device=x1.device)
        return float(self.loss((x0, x1, t)))


def train_cfm(field: nn.Module, path: GaussianPath,
              data: Sampler | tuple[Tensor, Tensor], *, coupling: str = "independent",
              ot_block: int | None = None, steps: int = 2000,
              batch_size: int = 256, lr: float = 2e-3, seed: int = 0,
              ema: float | None = 0.999, batch_loss: BatchLoss | None = None,
              eval_size: int = 4096, checkpoint: str | os.PathLike[str] | None = None,
              resume: bool = False, stop_at: int | None = None,
              model_spec: dict[str, Any] | None = None, progress: bool | None = False
              ) -> History:
    """Fit ``field`` by conditional flow matching: :func:`~nfcourse.training.engine.fit` of a
    :class:`CFMObjective` with Adam and a cosine-decayed learning rate (to 5%, no warm-up).

    Args:
        field: ``v(t, x)`` with ``t [B]``, e.g. :class:`~nfcourse.nn.VelocityMLP`, on the
            device to train on (noise and times are drawn there).
        path: the conditional path (noise at ``t = 0``, data at ``t = 1``).
        data: a sampler ``(n, generator) -> [n, D]`` of data points, or fixed pairs
            ``(x0 [N, D], x1 [N, D])`` (reflow; their first ``eval_size`` rows are the
            reported held-out set, since the pairs are the target itself).
        coupling: ``"independent"`` (I-CFM) or ``"ot"`` (exact minibatch OT, OT-CFM); must be
            ``"independent"`` for fixed pairs, which are already coupled.
        ot_block: solve the minibatch OT in blocks of this many rows (None: the whole batch).
        seed: seeds the data stream, the noise and the times.
        ema: decay of an exponential moving average of the weights, copied into ``field`` at
            the end (``None``: keep the last iterate). Averaging removes most of the noise the
            regression's random targets leave in the weights.
        batch_loss: replaces :func:`cfm_loss` by ``batch_loss(x0, x1, t)`` (the lecture's
            variant uses this); ``path`` is then unused.
        eval_size: held-out points scored once, at the end (``History.eval_loss``).
        checkpoint, resume, stop_at, model_spec, progress: as in
            :func:`~nfcourse.training.engine.fit` (a resumed run must use the same arguments).
    Returns:
        the :class:`~nfcourse.training.engine.History`; losses are squared velocity errors.
    """
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
    if not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"train_cfm: batch_size must be an int >= 2, got {batch_size!r}.")
    objective = CFMObjective(field, path, coupling, ot_block, batch_loss)
    # one evaluation, at the end, and no restore-best: the result is the (averaged) last field
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, weight_decay=0.0,
                         warmup=0, schedule="cosine", min_lr_ratio=0.05, clip_grad=None,
                         ema=ema, eval_every=steps, eval_size=eval_size, restore_best=False,
                         seed=seed)
    history = fit(objective, data, config, eval_data=data if fixed else None,
                  checkpoint=checkpoint, resume=resume, stop_at=stop_at,
                  model_spec=model_spec, progress=progress)
    field.eval()
    return history
