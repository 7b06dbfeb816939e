"""The files beside a compiled artifact: `model.json` (what it is) and `model.npz` (inputs and the quantized
reference's outputs), so `run`/`deploy` can check it on a device without PyTorch or the original model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import UserError


def sidecar_paths(artifact: Path) -> tuple[Path, Path]:
    """`model.so` -> (`model.json` metadata, `model.npz` evaluation inputs and reference outputs)."""
    return artifact.with_suffix(".json"), artifact.with_suffix(".npz")


def write_sidecar(artifact: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    meta_path, data_path = sidecar_paths(artifact)
    meta_path.write_text(json.dumps(meta, indent=2))
    np.savez_compressed(data_path, **arrays)


def read_sidecar(artifact: Path) -> tuple[dict, dict[str, np.ndarray]]:
    meta_path, data_path = sidecar_paths(artifact)
    if not artifact.is_file():
        raise UserError(f"artifact not found: {artifact}")
    if not (meta_path.is_file() and data_path.is_file()):
        raise UserError(f"{artifact} has no {meta_path.name}/{data_path.name} beside it (written by tvmquant compile)")
    with np.load(data_path, allow_pickle=False) as data:
        return json.loads(meta_path.read_text()), dict(data)
