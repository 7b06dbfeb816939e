"""User data checked where it enters, so that a bad file is a one-line error before any work, not a NumPy or
PyTorch traceback from deep inside calibration (NaN -> `cannot convert float NaN to integer`, an empty array
-> `torch.cat`). Arrays come only from .npy/.npz files, never unpickled."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .errors import UserError

_NPY_MAGIC = b"\x93NUMPY"


def load_npy(path: str | Path, what: str) -> np.ndarray:
    """A numeric array from a .npy file; other file types, pickled (object) arrays and truncated files are
    refused by name."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(len(_NPY_MAGIC))
    if head != _NPY_MAGIC:
        kind = "a .npz archive, not a readable .npy file" if zipfile.is_zipfile(path) else "not a readable .npy file"
        raise UserError(f"{what} file {path} is {kind}; save one array with numpy.save(path, array)")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise UserError(f"{what} file {path} holds Python objects, which are never unpickled; save a numeric array") from None
        raise UserError(f"{what} file {path} is not a readable .npy array: {_first_line(exc)}") from None
    except (OSError, EOFError) as exc:
        raise UserError(f"{what} file {path} is not a readable .npy array (truncated?): {_first_line(exc)}") from None


def model_input(batch: np.ndarray, input_shape: tuple[int, ...], what: str = "data") -> np.ndarray:
    """Non-empty, real-valued, finite data of the model's input shape (any batch size), as float32."""
    if batch.ndim != len(input_shape) or tuple(batch.shape[1:]) != tuple(input_shape[1:]):
        raise UserError(
            f"{what} of shape {tuple(batch.shape)} does not fit the model input {tuple(input_shape)} "
            f"(expected (N, {', '.join(map(str, input_shape[1:]))}))"
        )
    if len(batch) == 0:
        raise UserError(f"{what} is empty (shape {tuple(batch.shape)}); give at least one sample")
    if not (np.issubdtype(batch.dtype, np.integer) or np.issubdtype(batch.dtype, np.floating) or batch.dtype == bool):
        raise UserError(f"{what} has dtype {batch.dtype}; expected real numbers (float or integer)")
    with np.errstate(over="ignore"):  # values beyond float32 become Inf and are reported just below
        data = np.ascontiguousarray(batch, dtype=np.float32)
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise UserError(f"{what} has {bad} non-finite value(s) (NaN, Inf, or beyond float32) of {data.size}")
    return data


def labels(y: np.ndarray, count: int, classes: int | None, what: str) -> np.ndarray:
    """`count` integer class labels in [0, classes) (the range is not checked when the model's output is not
    one score per class); returned as int64."""
    if y.ndim != 1 or len(y) != count:
        raise UserError(f"{what}: expected {count} labels (shape ({count},)), got shape {tuple(y.shape)}")
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{what}: labels must be integers, got dtype {y.dtype}")
    if count and classes is not None and (y.min() < 0 or y.max() >= classes):
        raise UserError(f"{what}: labels must lie in 0..{classes - 1} (the model has {classes} outputs), "
                        f"got {y.min()}..{y.max()}")
    return y.astype(np.int64)


def classes_of(output: np.ndarray) -> int | None:
    """The number of classes a (batch, classes) model output scores; None for any other output shape."""
    return int(output.shape[1]) if output.ndim == 2 else None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
