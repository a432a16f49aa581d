"""The files the book ships in ``nfcourse/pretrained``: each matches its provenance record and
loads through the library's loaders (the chapters re-evaluate them against the records)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from nfcourse.models import BUILTIN_MODELS
from nfcourse.training.images import PRETRAINED_DIR, load_digit_classifier, load_image_model

WEIGHTS = sorted(PRETRAINED_DIR.glob("*.pt"))
PROVENANCE = ("command", "commit", "data", "seed", "steps", "batch_size", "wall_time_s",
              "machine", "size_bytes", "sha256")


def test_the_book_ships_its_three_models() -> None:
    names = {p.name for p in WEIGHTS}
    assert {"mnist_multiscale.pt", "mnist_glow.pt", "digit_classifier.pt"} <= names


@pytest.mark.parametrize("path", WEIGHTS, ids=[p.stem for p in WEIGHTS])
def test_weights_match_their_record_and_load(path: Path) -> None:
    record = json.loads(Path(str(path) + ".json").read_text())
    assert not [k for k in PROVENANCE if k not in record], "provenance is missing fields"
    data = path.read_bytes()
    assert record["size_bytes"] == len(data) < 10_000_000           # "a few MB"
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["command"].startswith("python -m nfcourse train ")
    if path.name == "digit_classifier.pt":
        classifier, rec = load_digit_classifier(path)
        assert rec == record and rec["held_out_accuracy"] >= 0.98
        return
    model, deq, ckpt = load_image_model(path)
    assert ckpt["model_spec"]["name"] in BUILTIN_MODELS and deq is not None
    assert not record["diverged"] and 0.97 < record["held_out_bits_per_dim"] < 8
    assert record["curve"]["step"][-1] == record["steps"] == len(record["curve"]["wall_time"]) \
        * record["config"]["eval_every"]
