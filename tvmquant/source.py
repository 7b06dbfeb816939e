"""Where a model comes from: the built-in digits CNN, a torch.export archive, an ONNX file or an nn.Module, with
the data to calibrate, evaluate and (QAT) train on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import fx

from . import frontend, validate
from .errors import UserError
from .frontend import LayerInfo

BUILTIN = "digits_cnn"


@dataclass
class ModelSource:
    """A model ready to quantize: folded graph, its layers, and the data to calibrate and evaluate on."""

    name: str
    gm: fx.GraphModule
    input_shape: tuple[int, ...]
    layers: list[LayerInfo]
    folded_bn: list[str]
    calib: np.ndarray
    eval_x: np.ndarray
    eval_y: np.ndarray | None
    eval_label: str
    notes: list[str] = field(default_factory=list)  # what the loader changed, for the summary

    @property
    def batch_size(self) -> int:
        return self.input_shape[0]

    def fp32(self, x: np.ndarray) -> np.ndarray:
        return _run(self.gm, x)


def _run(gm: fx.GraphModule, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return gm(torch.from_numpy(x)).numpy()


def classes(gm: fx.GraphModule, input_shape: tuple[int, ...]) -> int | None:
    """How many classes the model scores (labels must lie below), from one batch of the model's own shape."""
    return validate.classes_of(_run(gm, np.zeros(input_shape, np.float32)))


def load_source(
    model: str | Path | torch.nn.Module | None,
    input_shape: tuple[int, ...] | None = None,
    calib: np.ndarray | None = None,
    eval_x: np.ndarray | None = None,
    eval_y: np.ndarray | None = None,
    trust_model: bool = False,
) -> ModelSource:
    """Resolve the model (None = built-in digits CNN) and its calibration / evaluation data; a .pt2 is
    loaded as untrusted unless `trust_model` (see safe_load)."""
    eval_label, notes = "the evaluation data", []
    if model is None:
        from .models import digits

        name, input_shape = BUILTIN, input_shape or digits.INPUT_SHAPE
        ep = frontend.export_module(digits.load_model(), input_shape)
        if calib is None:
            calib = digits.load_split("calib")[0]
        if eval_x is None:
            eval_x, eval_y = digits.load_split("test")
            eval_label = f"{len(eval_x)} held-out real digits (sklearn)"
    elif isinstance(model, torch.nn.Module):
        if input_shape is None:
            raise UserError("input_shape is required for an nn.Module")
        name, ep = type(model).__name__, frontend.export_module(model, input_shape)
    elif Path(model).suffix.lower() == ".onnx":
        from .onnx_import import load_onnx

        onnx_model = load_onnx(model, input_shape)
        name, notes = Path(model).stem, onnx_model.notes
        ep = frontend.export_module(onnx_model.module, onnx_model.input_shape)
    else:
        name, ep = Path(model).stem, frontend.load_exported(model, trust_model)
    input_shape = frontend.input_shape_of(ep, input_shape)
    if calib is None:
        raise UserError(f"model '{name}' needs calibration data: pass --calib FILE.npy of shape (N, {_dims(input_shape)})")
    calib = validate.model_input(calib, input_shape, "calibration data")
    if eval_x is None:
        eval_x, eval_label = calib, f"{len(calib)} calibration samples (no --eval-data given)"
    eval_x = validate.model_input(eval_x, input_shape, "evaluation data")
    gm, folded = frontend.prepare(ep, input_shape)
    if eval_y is not None:
        eval_y = validate.labels(eval_y, len(eval_x), classes(gm, input_shape), "evaluation labels")
    layers = frontend.find_layers(gm)
    if not layers:
        raise UserError(f"model '{name}' has no conv2d or linear layer with parameter weights to quantize")
    return ModelSource(name, gm, input_shape, layers, folded, calib, eval_x, eval_y, eval_label, notes)


def _dims(shape: tuple[int, ...]) -> str:
    return ", ".join(map(str, shape[1:]))


def default_train_data(source: ModelSource) -> tuple[np.ndarray, np.ndarray]:
    """The built-in digits training split (real data); other models must bring theirs."""
    if source.name != BUILTIN:
        raise UserError(f"model '{source.name}' needs training data for --train: pass --train-data FILE.npz with arrays x and y")
    from .models import digits

    return digits.load_split("train")


def load_train_data(path: str | Path, input_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A .npz with `x` (N, ...) inputs and `y` (N,) integer labels."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"training data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            x, y = data["x"], data["y"]
    except Exception as exc:
        raise UserError(f"{path} is not a .npz with arrays 'x' and 'y': {exc}") from exc
    x = validate.model_input(x, input_shape, f"training data {path} 'x'")
    return x, validate.labels(y, len(x), None, f"training data {path} 'y'")
