"""Training flows on 8-bit images: :func:`train_images` builds the dequantisation ELBO
(:class:`~nfcourse.training.objectives.ImageELBO`) and calls the one training loop,
:func:`nfcourse.training.engine.fit` (DDP under torchrun, exact resume, early stopping and
restore-best included). :func:`load_image_model` reads back what it wrote. The command line,
``python -m nfcourse train mnist``, is in :mod:`nfcourse.cli`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from nfcourse.core.model import FlowModel
from nfcourse.data.images import check_pixels
from nfcourse.training.checkpoint import load_checkpoint
from nfcourse.training.engine import History, TrainConfig, fit
from nfcourse.training.objectives import ImageELBO


def train_images(model: FlowModel, train: Tensor, config: TrainConfig | None = None, *,
                 eval_images: Tensor, dequantizer: nn.Module | None = None,
                 checkpoint: str | os.PathLike[str] | None = None, resume: bool = False,
                 stop_at: int | None = None, model_spec: dict[str, Any] | None = None,
                 progress: bool | None = None, init_actnorm: int = 512) -> History:
    """Train ``model`` (and a variational ``dequantizer``) on integer images by max. likelihood.

    Args:
        model: a density on ``y`` in ``[0, 1)^D`` (e.g. :func:`nfcourse.models.tiny_realnvp`).
        train, eval_images: disjoint uint8 images ``[N, C, H, W]``; the first
            ``config.eval_size`` held-out images are scored at every evaluation.
        config, checkpoint, resume, stop_at, model_spec, progress: as in
            :func:`nfcourse.training.engine.fit`.
        init_actnorm: training images used to initialise the ActNorms (before training).
    Returns:
        :class:`History` in nats per image (``bits_per_dim(value, C * H * W)`` converts).
    """
    check_pixels(train, "train images")
    check_pixels(eval_images, "eval images")
    config = config or TrainConfig()
    device = next(model.parameters()).device
    objective = ImageELBO(model, dequantizer.to(device) if dequantizer is not None else None)
    objective.initialize_actnorms(train, config.seed + 7, init_actnorm)
    return fit(objective, train, config, eval_data=eval_images, checkpoint=checkpoint,
               resume=resume, stop_at=stop_at, model_spec=model_spec, progress=progress)


def load_image_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
                     ) -> tuple[FlowModel, nn.Module | None, dict[str, Any]]:
    """Rebuild ``(model, dequantizer or None, checkpoint)`` from a ``train mnist`` file."""
    from nfcourse.flows.images import VariationalDequantizer
    from nfcourse.models import build_model

    ckpt = load_checkpoint(path, map_location)
    spec = ckpt["model_spec"]
    model = build_model({"name": spec["name"], "kwargs": spec["kwargs"]})
    deq = VariationalDequantizer() if spec.get("dequant") == "variational" else None
    ImageELBO(model, deq).load_state_dict(ckpt["objective"])
    return model.eval(), deq, ckpt
