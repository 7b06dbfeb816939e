"""The `compile` pipeline as a Python API: model in, quantized scheme, compiled artifact and its evaluation out.

    source = load_source(None)                     # the built-in digits CNN, or a .pt2 path, or an nn.Module
    result = compile_model(source, QuantConfig(2, 2), load_target("x86"), Path("out.so"))
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import fx

from . import frontend, outputs, validate
from .batching import run_batched
from .build import Lowered, build
from .database import has_records, load_task_state, read_databases
from .errors import UserError
from .frontend import LayerInfo
from .outputs import sidecar_paths
from .plan import Plan, to_json
from .quantize import QuantConfig, quantize_model, quantize_with_training
from .reference import ReferenceModel
from .scheme import QuantScheme, WeightKind
from .rpc import DeviceModule, connect, device_errors, is_listening
from .resources import shipped_tuning_dir, user_tuning_dir
from .target import TargetSpec
from .train import TrainConfig

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


def _classes(gm: fx.GraphModule, input_shape: tuple[int, ...]) -> int | None:
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
        eval_y = validate.labels(eval_y, len(eval_x), _classes(gm, input_shape), "evaluation labels")
    layers = frontend.find_layers(gm)
    if not layers:
        raise UserError(f"model '{name}' has no conv2d or linear layer with parameter weights to quantize")
    return ModelSource(name, gm, input_shape, layers, folded, calib, eval_x, eval_y, eval_label, notes)


def _dims(shape: tuple[int, ...]) -> str:
    return ", ".join(map(str, shape[1:]))


@dataclass
class CompileResult:
    source: ModelSource
    config: QuantConfig
    target: TargetSpec
    scheme: QuantScheme
    lowered: Lowered
    artifact: Path
    reference_outputs: np.ndarray = field(repr=False)
    tuning_logs: list[Path] = field(default_factory=list)  # the databases whose records were applied
    tuned: list[str] = field(default_factory=list)  # functions scheduled by a tuning record
    untuned_faster: list[str] = field(default_factory=list)  # records not applied: the untuned build was faster
    linked_with: str = ""  # the linker that made the artifact (system cross compiler or pip zig)
    plan: Plan | None = None  # the per-layer plan it was quantized by, with predicted families and bytes

    @property
    def kernels(self) -> dict[str, str]:
        return self.lowered.kernels


def default_tuning_logs(target: TargetSpec) -> list[Path]:
    """What `compile` applies by default: the records shipped for the target, then the user's own `tune`
    records (user_tuning_dir); those that exist and hold records."""
    return [d for d in (shipped_tuning_dir(target.name), user_tuning_dir(target.name)) if has_records(d)]


def compile_model(
    source: ModelSource, config: QuantConfig, target: TargetSpec, output: Path,
    tuning_log: Path | list[Path] | None = None,
    train: TrainConfig | None = None, train_data: tuple[np.ndarray, np.ndarray] | None = None,
    kernel: str = "auto", plan: Plan | None = None,
) -> CompileResult:
    """Quantize (post-training, or with QAT when `train` is given), lower, compile and export; writes the
    artifact and its sidecar files. QAT data defaults to the built-in model's training split.

    `tuning_log`: `tune` log folder(s) whose matching records schedule the kernels (no tuning happens here);
    with several, the fastest record of each function wins.
    `kernel`: "auto" (each layer's scheme kind picks its kernel family) or a family to use wherever it applies.
    `plan`: quantize each layer by its own method and bits (plan_apply.py; post-training) instead of `config`'s.
    """
    gm = source.gm
    if train_data is not None:  # the class range needs the model's output width
        validate.labels(train_data[1], len(train_data[0]), _classes(gm, source.input_shape), "training labels")
    if plan is not None:
        from .plan_apply import fill_predictions, quantize_planned

        if train is not None:
            raise UserError("a per-layer plan is post-training; it cannot be combined with training")
        scheme = quantize_planned(gm, source.layers, source.calib, plan, config, source.batch_size)
        plan = fill_predictions(plan, scheme, gm, source.layers, source.calib, source.batch_size, target, kernel)
    elif train is None:
        scheme = quantize_model(gm, source.layers, source.calib, config, source.batch_size)
    else:
        data = train_data if train_data is not None else default_train_data(source)
        scheme, gm = quantize_with_training(
            gm, source.layers, source.calib, config, source.batch_size, train, data
        )
    mod, params, param_fqn = frontend.to_relax(gm, source.input_shape)
    logs = [tuning_log] if isinstance(tuning_log, Path) else list(tuning_log or [])
    database, untuned = (read_databases(logs), {}) if logs else (None, {})
    for log in logs:
        untuned.update({k: v["untuned_ms"] for k, v in load_task_state(log).items() if "untuned_ms" in v})
    built = build(mod, params, param_fqn, source.layers, scheme, target, database, untuned, kernel)
    reference = ReferenceModel(gm, source.layers, scheme)
    reference_outputs = run_batched(reference, source.eval_x, source.batch_size, "quantized reference")
    result = CompileResult(source, config, target, scheme, built.lowered, output, reference_outputs,
                           logs, built.tuned, built.untuned_faster, plan=plan)
    with outputs.replace_together(output, *sidecar_paths(output)) as (artifact, meta, data):
        result.linked_with = target.export(built.executable, artifact)
        write_sidecar(result, meta, data)
    return result


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


@dataclass
class Evaluation:
    """Outputs of fp32, quantized reference and compiled module on the evaluation data."""

    fp32: np.ndarray
    reference: np.ndarray
    compiled: np.ndarray | None
    where: str  # where the compiled module ran, or why it did not
    latency_ms: float | None = None


def evaluate(result: CompileResult, rpc_address: str | None) -> Evaluation:
    """Run the exported artifact itself: here for local targets, on the RPC device if one is up."""
    src, target = result.source, result.target
    fp32 = run_batched(src.fp32, src.eval_x, src.batch_size)
    gpu = target.device_kind == "cuda"
    if target.runs == "rpc" or (gpu and rpc_address):
        if not rpc_address or not is_listening(rpc_address):
            reason = f"not run: no device at {rpc_address}" if rpc_address else "not run: no --rpc device given"
            if target.name == "arm_cpu":
                reason += " (start the emulated one: scripts/arm64-device.sh start)"
            return Evaluation(fp32, result.reference_outputs, None, reason)
        where = f"{target.name} device at {rpc_address}"
        try:
            with device_errors(where):
                module = DeviceModule.remote(connect(rpc_address), result.artifact, target.device_kind)
                compiled = run_batched(module, src.eval_x, src.batch_size, f"compiled module on {where}")
                latency = module.latency_ms(src.eval_x[: src.batch_size])
        except UserError as exc:
            return Evaluation(fp32, result.reference_outputs, None, f"not run: {exc}")
        return Evaluation(fp32, result.reference_outputs, compiled, where, latency)
    if gpu:
        from .cuda.target import gpu_present, no_gpu_reason

        if not gpu_present():
            return Evaluation(fp32, result.reference_outputs, None, f"not run: {no_gpu_reason(target)}")
    module, where = DeviceModule.local(result.artifact, target.device_kind), f"{target.name}, this machine"
    compiled = run_batched(module, src.eval_x, src.batch_size, f"compiled module on {where}")
    latency = module.latency_ms(src.eval_x[: src.batch_size])
    return Evaluation(fp32, result.reference_outputs, compiled, where, latency)


def write_sidecar(result: CompileResult, meta_path: Path, data_path: Path) -> None:
    """What `tvmquant run` needs to check an artifact on a device without PyTorch or the original model."""
    from .json_output import layer_rows

    src = result.source
    meta = {
        "model": src.name,
        "target": result.target.name,
        "input_shape": list(src.input_shape),
        "config": vars(result.config),
        "layers": {name: {"scheme": layer.describe(), "kernel": result.kernels.get(name, "float32")}
                   for name, layer in result.scheme.layers.items()},
        "kept_float": result.scheme.kept_float,
        "eval_label": src.eval_label,
        "tuned_functions": result.tuned,
        "layer_table": layer_rows(result),  # what `run --json` reports per layer
    }
    if result.plan is not None:
        meta["plan"] = json.loads(to_json(result.plan))
    meta_path.write_text(json.dumps(meta, indent=2))
    arrays = {"inputs": src.eval_x, "reference": result.reference_outputs}
    if src.eval_y is not None:
        arrays["labels"] = src.eval_y
    with open(data_path, "wb") as out:  # a file object: savez would append ".npz" to a temporary name
        np.savez_compressed(out, **arrays)


def read_sidecar(artifact: Path) -> tuple[dict, dict[str, np.ndarray]]:
    meta_path, data_path = sidecar_paths(artifact)
    if not artifact.is_file():
        raise UserError(f"artifact not found: {artifact}")
    if not (meta_path.is_file() and data_path.is_file()):
        raise UserError(f"{artifact} has no {meta_path.name}/{data_path.name} beside it (written by tvmquant compile)")
    with np.load(data_path, allow_pickle=False) as data:
        return json.loads(meta_path.read_text()), dict(data)


def weight_bytes(result: CompileResult) -> list[tuple[str, int, int]]:
    """(layer, fp32 bytes, deployed bytes) per quantized layer; deployed = the kernel's constants as the
    artifact holds them (packed codes and per-channel data; float64 integer matrices for the dequant fallback)."""
    rows = []
    for name, layer in result.scheme.layers.items():
        codes = layer.weight.codes
        size = codes[0].size if layer.weight.kind is WeightKind.MULTIPOINT else codes.size
        rows.append((name, 4 * size, result.lowered.const_bytes[name]))
    return rows
