"""Reading the files beside a compiled artifact (outputs.sidecar_paths: `OUT.so.json` metadata, `OUT.so.npz`
inputs and the quantized reference's outputs), so `run`/`deploy` can check it on a device without PyTorch or
the original model. compile.write_sidecar writes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import UserError
from .outputs import sidecar_paths


def read_sidecar(artifact: Path) -> tuple[dict, dict[str, np.ndarray]]:
    meta_path, data_path = sidecar_paths(artifact)
    if not artifact.is_file():
        raise UserError(f"artifact not found: {artifact}")
    if not (meta_path.is_file() and data_path.is_file()):
        raise UserError(f"{artifact} has no {meta_path.name}/{data_path.name} beside it (written by tvmquant compile)")
    with np.load(data_path, allow_pickle=False) as data:
        return json.loads(meta_path.read_text()), dict(data)
