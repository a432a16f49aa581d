"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (nothing pickled
beyond that, so loading it cannot run code). It records how to rebuild the model
(``model_spec``: a builder name and its keyword arguments), so ``load_model(path)`` needs no
other information.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nfcourse.flows.coupling import nice, realnvp
from nfcourse.model import FlowModel

FORMAT = "nfcourse.checkpoint"
VERSION = 1

# name -> builder(**kwargs) -> FlowModel. Later chapters register their models here so the CLI
# and load_model can rebuild them.
MODEL_BUILDERS: dict[str, Callable[..., FlowModel]] = {"realnvp": realnvp, "nice": nice}


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be used (truncated, corrupt, or not ours)."""


def register_model(name: str, builder: Callable[..., FlowModel]) -> None:
    """Make ``builder`` available to :func:`build_model` under ``name`` (names must be new)."""
    if name in MODEL_BUILDERS:
        raise ValueError(f"a model called {name!r} is already registered.")
    MODEL_BUILDERS[name] = builder


def build_model(spec: dict[str, Any]) -> FlowModel:
    """Build a model from ``{"name": "realnvp", "kwargs": {"layers": 8, ...}}``."""
    name = spec.get("name")
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of "
                         f"{', '.join(sorted(MODEL_BUILDERS))}.")
    return MODEL_BUILDERS[name](**spec.get("kwargs", {}))


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically and return the path.

    The data goes to a temporary file in the same directory, is flushed to disk, and then
    renamed over ``path`` with ``os.replace`` (atomic on POSIX and Windows): a crash mid-write
    leaves the previous checkpoint intact instead of a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _first_sentence(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text.split(". ")[0][:200]


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is truncated, corrupt, or not an nfcourse checkpoint; the
            message names the file and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train a model first, e.g. "
                                f"`python -m nfcourse train --data moons --out {path}`.")
    fix = ("Delete it and train again, or restore an intact copy (nfcourse writes checkpoints "
           "atomically, so a damaged file usually comes from an interrupted copy or download).")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # A complete torch file that safe loading refuses is a foreign pickle; anything that is
        # not even a complete zip archive (torch's format) is damaged.
        refused = "weights" in str(err).lower().replace("_", " ")
        if not (refused and zipfile.is_zipfile(path)):
            raise CheckpointError(f"cannot read checkpoint {path}: the file is truncated or "
                                  f"corrupt ({_first_sentence(err)}). {fix}") from err
        raise CheckpointError(f"{path} holds Python objects that safe loading "
                              "(torch.load(weights_only=True)) refuses to unpickle, so it was not "
                              "written by nfcourse. Use a checkpoint written by nfcourse.train.fit"
                              " or `python -m nfcourse train`; never load untrusted pickles."
                              ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError,
            OSError, KeyError, IndexError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is truncated or corrupt "
                              f"({type(err).__name__}: {_first_sentence(err)}). "
                              f"{fix}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a PyTorch file but not an nfcourse checkpoint (no "
                              f"'format': '{FORMAT}' entry). Pass a file written by "
                              "nfcourse.train.fit or `python -m nfcourse train`.")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {payload.get('version')}, "
                              f"this nfcourse reads version {VERSION}; retrain with this version.")
    return payload


def load_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
               ) -> tuple[FlowModel, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint; returns ``(model in eval mode, checkpoint)``."""
    ckpt = load_checkpoint(path, map_location)
    spec = ckpt.get("model_spec")
    if not spec:
        raise CheckpointError(f"checkpoint {path} does not say how to build its model (no "
                              "model_spec); build the model yourself and load "
                              "checkpoint['model'] with load_state_dict.")
    model = build_model(spec)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(f"checkpoint {path}: its weights do not fit the model it "
                              f"describes ({spec}): {err}") from err
    return model.to(map_location).eval(), ckpt
