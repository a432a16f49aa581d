"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (nothing pickled
beyond that, so loading it cannot run code). It records how to rebuild the model
(``model_spec``: a builder name and its keyword arguments), so ``load_model(path)`` needs no
other information, in any process: every model the book trains has its builder in a static
table (:data:`nfcourse.models.BUILTIN_MODELS`).

Every checkpoint also stores a SHA-256 digest of all its tensors (names, dtypes, shapes and
bytes); :func:`load_checkpoint` recomputes it, so a file whose tensor bytes were damaged on
disk raises :class:`CheckpointError` instead of loading wrong weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from nfcourse.models import build_model

FORMAT = "nfcourse.training.checkpoint"
VERSION = 1
DIGEST_KEY = "tensor_sha256"

class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be used (truncated, corrupt, or not ours)."""


def _tensors(value: Any, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts/lists/tuples, with a path, in a deterministic order."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, dict):
        for key in sorted(value, key=repr):
            yield from _tensors(value[key], f"{path}/{key!r}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{path}/{i}")


def tensor_digest(payload: dict[str, Any]) -> str:
    """SHA-256 over every tensor in ``payload`` (except the digest entry): path, dtype, shape
    and raw bytes, so a changed value, a swapped entry or a reshaped tensor all change it."""
    h = hashlib.sha256()
    for path, t in _tensors({k: v for k, v in payload.items() if k != DIGEST_KEY}):
        h.update(f"{path}|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.detach().cpu().contiguous().reshape(-1)
        if flat.numel():
            h.update(memoryview(flat.view(torch.uint8).numpy()))
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically and return the path.

    The data goes to a temporary file in the same directory, is flushed to disk, and then
    renamed over ``path`` with ``os.replace`` (atomic on POSIX and Windows): a crash mid-write
    leaves the previous checkpoint intact instead of a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    payload[DIGEST_KEY] = tensor_digest(payload)
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
                              "written by nfcourse. Use a checkpoint written by nfcourse.training.engine.fit"
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
                              "nfcourse.training.engine.fit or `python -m nfcourse train`.")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {payload.get('version')}, "
                              f"this nfcourse reads version {VERSION}; retrain with this version.")
    # torch.load does not check the zip's CRCs, so damaged tensor bytes would load silently;
    # the digest written by save_checkpoint catches them. Files without one predate it.
    stored = payload.get(DIGEST_KEY)
    if stored is not None and stored != tensor_digest(payload):
        raise CheckpointError(f"checkpoint {path} is corrupt: its tensors do not match the "
                              f"SHA-256 digest stored when it was written, so some weights are "
                              f"damaged. {fix}")
    return payload


def _state_dtype(state: dict[str, Any]) -> torch.dtype | None:
    """The dtype of the first floating-point tensor of a state dict (None if there is none)."""
    return next((t.dtype for t in state.values()
                 if isinstance(t, torch.Tensor) and t.is_floating_point()), None)


def load_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
               ) -> tuple[Any, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint; returns ``(model in eval mode, checkpoint)``.

    The model gets the dtype its weights were saved in (a float64 model loads as float64).
    """
    ckpt = load_checkpoint(path, map_location)
    spec = ckpt.get("model_spec")
    if not spec:
        raise CheckpointError(f"checkpoint {path} does not say how to build its model (no "
                              "model_spec); build the model yourself and load "
                              "checkpoint['model'] with load_state_dict.")
    try:
        model = build_model(spec)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path}: cannot rebuild its model from {spec}: {err}"
                              ) from err
    state = ckpt["model"] if isinstance(ckpt.get("model"), dict) else {}
    dtype = _state_dtype(state)
    if dtype is not None:
        # built in the default dtype; cast first so load_state_dict does not round the weights
        model = model.to(dtype)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(f"checkpoint {path}: its weights do not fit the model it "
                              f"describes ({spec}): {err}") from err
    return model.to(map_location).eval(), ckpt
