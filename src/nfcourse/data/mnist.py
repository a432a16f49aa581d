"""MNIST from the standard IDX files: local directory first, verified download second.

Where the files come from, in order:

1. the directory passed as ``root=`` to :func:`load_mnist`, else
2. the directory in the environment variable ``NFCOURSE_MNIST_DIR``, else
3. the cache directory (``NFCOURSE_CACHE`` or ``~/.cache/nfcourse``) ``/mnist``, where
   ``download=True`` (the default) fetches missing files from a public mirror when a network
   is there.

Each file may be stored gzipped (``name.gz``) or raw (``name``). Whatever its origin, the
*decompressed* bytes must have the published SHA-256 (recompressed copies differ in their gzip
bytes, so the ``.gz`` checksum proves nothing); a mismatch is an error, never a warning. When
a split is missing and cannot be downloaded, the error says which files were looked for where
and what to set. Nothing is ever substituted: no synthetic digits, no other data set.

Images come back as ``uint8`` tensors ``[N, 1, 28, 28]`` (grey levels 0..255), labels as
``int64`` ``[N]``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

ENV_DIR = "NFCOURSE_MNIST_DIR"
ENV_CACHE = "NFCOURSE_CACHE"
SHAPE = (1, 28, 28)
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
           "https://storage.googleapis.com/cvdf-datasets/mnist/")

# SHA-256 of the decompressed IDX files (identical on every mirror).
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class MnistError(RuntimeError):
    """MNIST files are missing, corrupt or fail their checksum; the message says what to do."""


class ChecksumError(MnistError):
    """The decompressed content of an IDX file does not have the published SHA-256."""


# ----------------------------------------------------------------------------- IDX format

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """Decode IDX bytes (magic ``0 0 type ndim``, big-endian sizes, then the values)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise MnistError(f"{name} is not an IDX file (bad magic number {data[:4].hex()!r}); "
                         "it may be an HTML error page or a truncated download. Delete it.")
    kind, ndim = data[2], data[3]
    if kind not in _IDX_TYPES:
        raise MnistError(f"{name}: unknown IDX element type 0x{kind:02x}.")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise MnistError(f"{name} is truncated inside its header.")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[kind])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise MnistError(f"{name} has {len(data)} bytes, its header {list(dims)} implies "
                         f"{expected}; the file is truncated or corrupt. Delete it.")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def write_idx(path: str | os.PathLike[str], array: np.ndarray, compress: bool = False) -> Path:
    """Write a ``uint8`` array as an IDX file (gzipped if ``compress``); used by the tests."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


# ----------------------------------------------------------------------------- files


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_dir() -> Path:
    """Where downloads go: ``$NFCOURSE_CACHE/mnist`` or ``~/.cache/nfcourse/mnist``."""
    base = os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "nfcourse"
    return Path(base) / "mnist"


def _read_local(directory: Path, name: str) -> bytes | None:
    """Decompressed bytes of ``name`` or ``name.gz`` in ``directory``; ``None`` if neither."""
    raw, gz = directory / name, directory / f"{name}.gz"
    if raw.is_file():
        return raw.read_bytes()
    if gz.is_file():
        try:
            return gzip.decompress(gz.read_bytes())
        except (OSError, EOFError) as err:
            raise MnistError(f"{gz} is not a valid gzip file ({err}); delete it or replace it "
                             "with an intact copy.") from err
    return None


def _verify(data: bytes, name: str, where: Path, checksums: dict[str, str]) -> None:
    want = checksums.get(name)
    got = sha256_hex(data)
    if want is not None and got != want:
        raise ChecksumError(
            f"{where / name}(.gz): the decompressed content has SHA-256 {got}, expected "
            f"{want}. The file is corrupt, truncated or not the original MNIST; delete it and "
            f"point {ENV_DIR} at an intact copy (or let nfcourse download it).")


def _download(name: str, directory: Path, checksums: dict[str, str]) -> bytes:
    """Fetch ``name.gz`` from the mirrors, verify the decompressed bytes, store it atomically."""
    errors = []
    for mirror in MIRRORS:
        url = f"{mirror}{name}.gz"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (fixed https)
                packed = response.read()
            data = gzip.decompress(packed)
            _verify(data, name, directory, checksums)
        except (urllib.error.URLError, OSError, EOFError, ChecksumError) as err:
            errors.append(f"{url}: {err}")
            continue
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as fh:
            fh.write(packed)
        os.replace(tmp, directory / f"{name}.gz")
        return data
    raise MnistError("could not download " + name + ": " + "; ".join(errors))


@dataclass(frozen=True)
class MnistSplit:
    """One MNIST split: ``images`` uint8 ``[N, 1, 28, 28]``, ``labels`` int64 ``[N]``."""

    images: Tensor
    labels: Tensor
    split: str
    source: Path

    def __len__(self) -> int:
        return len(self.images)


def _missing_message(split: str, looked: list[Path], download_note: str) -> str:
    files = " and ".join(f"{n}[.gz]" for n in SPLITS[split])
    where = ", ".join(str(p) for p in looked) or "(no directory given)"
    return (f"MNIST {split} split not found: looked for {files} in {where}. {download_note}"
            f"Set {ENV_DIR} to a directory holding the IDX files (gzipped or not), pass "
            f"root=..., or run once with network access to download them to {cache_dir()}.")


def load_mnist(split: str = "test", root: str | os.PathLike[str] | None = None, *,
               download: bool = True, checksums: dict[str, str] | None = None) -> MnistSplit:
    """Load one split (``"train"``: 60,000 images, ``"test"``: 10,000), verified by SHA-256.

    Args:
        split: ``"train"`` or ``"test"``.
        root: directory with the IDX files; default ``$NFCOURSE_MNIST_DIR``, then the cache.
        download: when the files are in none of those places, fetch them into the cache
            (verified before they are kept). Needs a network; without one the error says so.
        checksums: file name -> SHA-256 of the decompressed bytes (default: the published
            ones). Only the tests pass their own, for files they make.
    Raises:
        MnistError (or its subclass ChecksumError) with the fix in the message.
    """
    if split not in SPLITS:
        raise ValueError(f"MNIST split must be one of {', '.join(SPLITS)}, got {split!r}.")
    checksums = SHA256 if checksums is None else checksums
    directories = []
    if root is not None:
        directories.append(Path(root))
        if not directories[0].is_dir():
            raise MnistError(f"MNIST directory {root} does not exist; pass the directory that "
                             "holds the IDX files.")
    elif os.environ.get(ENV_DIR):
        directories.append(Path(os.environ[ENV_DIR]))
        if not directories[0].is_dir():
            raise MnistError(f"{ENV_DIR}={directories[0]} is not a directory; point it at the "
                             "folder with the MNIST IDX files or unset it.")
    if cache_dir() not in directories:
        directories.append(cache_dir())  # earlier downloads
    arrays = []
    source = directories[0]
    for name in SPLITS[split]:
        data = None
        for directory in directories:
            data = _read_local(directory, name)
            if data is not None:
                _verify(data, name, directory, checksums)
                source = directory
                break
        if data is None:
            if not download:
                raise MnistError(_missing_message(split, directories, "Downloading is off. "))
            try:
                data = _download(name, cache_dir(), checksums)
            except MnistError as err:
                raise MnistError(_missing_message(
                    split, directories, f"Download failed ({err}). ")) from None
            source = cache_dir()
        arrays.append(parse_idx(data, name))
    images, labels = arrays
    if images.ndim != 3 or images.shape[1:] != SHAPE[1:] or labels.shape != images.shape[:1]:
        raise MnistError(f"MNIST {split}: images {images.shape} and labels {labels.shape} do "
                         "not form a set of 28x28 images with one label each.")
    return MnistSplit(torch.from_numpy(images.copy()).reshape(-1, *SHAPE),
                      torch.from_numpy(labels.astype(np.int64)), split, source)


@dataclass(frozen=True)
class MnistData:
    """Disjoint training and evaluation images (uint8 ``[N, 1, 28, 28]``), their labels
    (int64 ``[N]``) and what they are."""

    train: Tensor
    test: Tensor
    description: str
    full: bool
    train_labels: Tensor
    test_labels: Tensor


def mnist_train_test(full: bool, root: str | os.PathLike[str] | None = None, *,
                     ci_train: int = 8000, seed: int = 0, download: bool = True) -> MnistData:
    """Training and evaluation images for a chapter or a training run.

    ``full=True``: the standard split, 60,000 training and 10,000 test images (downloaded if
    needed). ``full=False``: only the 10,000-image test split is used (it is all that CI and
    offline machines have): shuffled with ``seed``, its first ``ci_train`` images are for
    training and the rest for evaluation. The ``description`` says which, for the page.
    """
    test = load_mnist("test", root, download=download)
    if full:
        train = load_mnist("train", root, download=download)
        return MnistData(train.images, test.images,
                         "trained on the 60,000 MNIST training images, evaluated on the "
                         "10,000 MNIST test images", True, train.labels, test.labels)
    if not 0 < ci_train < len(test):
        raise ValueError(f"ci_train must be between 1 and {len(test) - 1}, got {ci_train}.")
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
    rest = len(test) - ci_train
    return MnistData(test.images[order[:ci_train]], test.images[order[ci_train:]],
                     f"only the MNIST test split is used: trained on {ci_train:,} of its "
                     f"{len(test):,} images and evaluated on the other {rest:,} (a random "
                     f"split, seed {seed}; the 60,000 training images are not used)", False,
                     test.labels[order[:ci_train]], test.labels[order[ci_train:]])
