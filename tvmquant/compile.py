"""The `compile` command as a Python API: model in; quantized scheme, artifact and its sidecar files out. The
compiler itself is pipeline.py; this adds the reference outputs and writes the files.

    source = load_source(None)                     # the built-in digits CNN, or a .pt2 path, or an nn.Module
    result = compile_model(source, QuantConfig(2, 2), load_target("x86"), Path("out.so"))
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import outputs, pipeline, validate
from .artifact import read_sidecar  # noqa: F401  (re-exported: run, deploy and bench read artifacts)
from .batching import run_batched
from .database import has_records
from .evaluation import Evaluation, evaluate  # noqa: F401  (re-exported for the reports)
from .outputs import sidecar_paths
from .passes.lower_quantized import Lowered
from .pipeline import BuildOptions, QuantRequest
from .plan import Plan, to_json
from .quantize import QuantConfig
from .reference import ReferenceModel
from .resources import shipped_tuning_dir, user_tuning_dir
from .scheme import QuantScheme, WeightKind
from .source import BUILTIN, ModelSource, classes, load_source, load_train_data  # noqa: F401  (re-exported: the API)
from .target import TargetSpec


@dataclass
class CompileResult:
    source: ModelSource
    request: QuantRequest
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
    def config(self) -> QuantConfig:
        return self.request.config

    @property
    def kernels(self) -> dict[str, str]:
        return self.lowered.kernels


def default_tuning_logs(target: TargetSpec) -> list[Path]:
    """What `compile` applies by default: the records shipped for the target, then the user's own `tune`
    records (user_tuning_dir); those that exist and hold records."""
    return [d for d in (shipped_tuning_dir(target.name), user_tuning_dir(target.name)) if has_records(d)]


def compile_model(
    source: ModelSource, request: QuantRequest | QuantConfig, target: TargetSpec, output: Path,
    options: BuildOptions = BuildOptions(),
) -> CompileResult:
    """Quantize (a bare QuantConfig: post-training), build with `options` (kernel choice, tuning records; no
    tuning happens here), export; writes the artifact and its sidecar files, all or nothing. A request with a
    per-layer `plan` gets it back in the result with each layer's predicted family and bytes filled in."""
    request = request if isinstance(request, QuantRequest) else QuantRequest(request)
    if request.train_data is not None:  # the class range needs the model's output width
        x, y = request.train_data
        validate.labels(y, len(x), classes(source.gm, source.input_shape), "training labels")
    quantized = pipeline.quantize(source, request)
    built = pipeline.build(source, quantized, target, options)
    plan = request.plan
    if plan is not None:
        from .plan_apply import fill_predictions

        plan = fill_predictions(plan, quantized.scheme, source.gm, source.layers, source.calib, source.batch_size,
                                target, options.kernel)
    reference = ReferenceModel(quantized.gm, source.layers, quantized.scheme)
    reference_outputs = run_batched(reference, source.eval_x, source.batch_size, "quantized reference")
    records = options.records
    result = CompileResult(source, request, target, quantized.scheme, built.lowered, output, reference_outputs,
                           records.log_dirs if records else [], built.tuned, built.untuned_faster, plan=plan)
    with outputs.replace_together(output, *sidecar_paths(output)) as (artifact, meta, data):
        result.linked_with = pipeline.export(built.executable, target, artifact)
        write_sidecar(result, meta, data)
    return result


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


def weight_bytes(result: CompileResult) -> list[tuple[str, int, int]]:
    """(layer, fp32 bytes, deployed bytes) per quantized layer; deployed = the kernel's constants as the
    artifact holds them (packed codes and per-channel data; float64 integer matrices for the dequant fallback)."""
    rows = []
    for name, layer in result.scheme.layers.items():
        codes = layer.weight.codes
        size = codes[0].size if layer.weight.kind is WeightKind.MULTIPOINT else codes.size
        rows.append((name, 4 * size, result.lowered.const_bytes[name]))
    return rows
