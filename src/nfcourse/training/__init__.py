"""The one training engine (:mod:`.engine`) and its checkpoints (:mod:`.checkpoint`)."""

from nfcourse.training.checkpoint import (CheckpointError, load_checkpoint, load_model,
                                          save_checkpoint)
from nfcourse.training.engine import History, TrainConfig, evaluate_nll, fit

__all__ = ["fit", "TrainConfig", "History", "evaluate_nll", "CheckpointError", "load_checkpoint",
           "load_model", "save_checkpoint"]
