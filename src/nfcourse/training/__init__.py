"""The one training engine (:mod:`.engine`), its objectives (:mod:`.objectives`), the image
trainer's convenience wrapper (:mod:`.images`) and checkpoints (:mod:`.checkpoint`)."""

from nfcourse.training.checkpoint import (CheckpointError, load_checkpoint, load_model,
                                          save_checkpoint)
from nfcourse.training.engine import History, TrainConfig, evaluate_nll, fit
from nfcourse.training.objectives import (ImageELBO, MaximumLikelihood, evaluate_bits_per_dim,
                                          image_nll, per_image_bits_per_dim, per_image_nll)

__all__ = ["fit", "TrainConfig", "History", "evaluate_nll", "CheckpointError", "load_checkpoint",
           "load_model", "save_checkpoint", "ImageELBO", "MaximumLikelihood",
           "evaluate_bits_per_dim", "image_nll", "per_image_bits_per_dim", "per_image_nll"]
