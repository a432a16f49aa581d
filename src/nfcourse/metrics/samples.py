"""A number beside the pictures: how digit-like are a model's samples?

A small convolutional classifier, trained on the real training digits, reads each sample. Two
summaries of what it says (for real held-out digits they are the reference):

* **mean confidence**: the average of ``max_k p(k | x)``. Real digits are read with confidence
  near 1; blobs that are no digit get spread-out, low-confidence predictions.
* **class histogram** and the **classifier score**, ``exp(E_x KL(p(k | x) || p(k)))`` (the
  "Inception score" of Salimans et al. 2016 with an MNIST classifier in place of Inception):
  high when every sample is read confidently *and* the ten classes are all represented. It is
  at most 10 (the number of classes); a model that draws only one kind of digit scores ~1.

These are summaries of a classifier's opinion, not a likelihood: a model can score well on
them and badly on bits/dim, or the reverse. They are worth reading together.

The classifier is trained with the one training engine through
:class:`ClassificationObjective` (``fit(objective, (images, labels), config, eval_data=...)``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _as_float_images(x: Tensor) -> Tensor:
    """uint8 grey levels -> ``[0, 1]``; float images are taken as already in ``[0, 1]``."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


class DigitClassifier(nn.Module):
    """``[B, 1, 28, 28]`` digits (uint8 levels or floats in ``[0, 1]``) -> logits ``[B, 10]``.

    Two 3x3 convolution + max-pool stages (32 and 64 channels) and a 128-unit layer: small
    enough to train in seconds on a CPU, accurate enough (about 98-99 % on held-out MNIST) to
    tell a digit from a blob.
    """

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
                                  nn.Dropout(0.25), nn.Linear(128, classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(_as_float_images(x) - 0.5))


class ClassificationObjective(nn.Module):
    """Cross-entropy of a classifier, for :func:`nfcourse.training.engine.fit`.

    ``data`` and held-out data are ``(images, labels)`` tuples. A batch is random rows, each
    image shifted by up to ``shift`` pixels (a cheap augmentation: digits are not always
    centred). ``evaluate`` returns the held-out error rate (lower is better, as ``fit``
    expects).
    """

    def __init__(self, model: nn.Module, shift: int = 2) -> None:
        super().__init__()
        self.model, self.shift = model, int(shift)

    def draw(self, data: tuple[Tensor, Tensor], n: int, generator: torch.Generator,
             noise_generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        images, labels = data
        idx = torch.randint(0, len(images), (n,), generator=generator)
        x = _as_float_images(images[idx])
        if self.shift:
            s = self.shift
            dx, dy = (int(v) for v in torch.randint(-s, s + 1, (2,), generator=generator))
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        return x, labels[idx]

    def loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def forward(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        return self.loss(batch)

    @torch.no_grad()
    def evaluate(self, held_out: tuple[Tensor, Tensor]) -> float:
        images, labels = held_out
        return 1.0 - accuracy(self.model, images, labels)


@torch.no_grad()
def class_probabilities(classifier: nn.Module, images: Tensor, batch: int = 1000) -> Tensor:
    """``p(k | x)`` for every image, ``[N, classes]`` (eval mode; the previous mode restored)."""
    was = classifier.training
    classifier.eval()
    try:
        device = next(classifier.parameters()).device
        probs = [F.softmax(classifier(part.to(device)), dim=1).cpu()
                 for part in images.split(batch)]
    finally:
        classifier.train(was)
    return torch.cat(probs)


def accuracy(classifier: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Fraction of ``images`` whose most probable class is their label."""
    pred = class_probabilities(classifier, images).argmax(1)
    return float((pred == labels.cpu()).double().mean())


def sample_scores(probs: Tensor) -> dict[str, object]:
    """Summaries of ``p(k | x)`` ``[N, K]``: ``mean_confidence``, ``class_fractions`` (a list
    of ``K`` fractions of argmax predictions), and ``classifier_score``
    ``exp(mean KL(p(k | x) || p(k)))`` with ``p(k)`` the average prediction."""
    if probs.dim() != 2 or len(probs) < 1:
        raise ValueError(f"probs must be [N, K] with N >= 1, got {list(probs.shape)}.")
    p = probs.double().clamp_min(1e-12)
    marginal = p.mean(0, keepdim=True)
    kl = (p * (p.log() - marginal.log())).sum(1)
    fractions = torch.bincount(p.argmax(1), minlength=p.shape[1]).double() / len(p)
    return {"mean_confidence": float(p.max(1).values.mean()),
            "class_fractions": [float(f) for f in fractions],
            "classifier_score": math.exp(float(kl.mean()))}
