"""`--json`: one JSON object on stdout for scripts and CI, everything else (the readable summary, progress, TVM's
own prints) on stderr. The redirection is at the file-descriptor level so that native code's output moves too.

Fields (README, "Machine-readable output"): `command`, `artifact`, `target`, `model`, `layers` (one object per
conv2d/linear layer: `name`, `op`, `method`, `kind`, `wbits`, `abits`, `kernel`, `bytes`, `fp32_bytes`),
`plan` (compile with a budget or --plan-in: the plan file's object, else null),
and, where the compiled module ran, `agreement` (top-1 agreement with the quantized reference, 0-1),
`max_abs_diff`, `latency_ms`, `accuracy`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .compile import CompileResult, Evaluation
    from .report import Comparison
    from .tune import TaskResult

HELP = "print one JSON object on stdout (and everything else on stderr), for scripts and CI"

_json_stream: TextIO | None = None  # the real stdout while `stdout_to_stderr` is active


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """While active, fd 1 and sys.stdout point at stderr; `emit` writes to the real stdout."""
    global _json_stream
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    previous, sys.stdout = sys.stdout, sys.stderr
    _json_stream = os.fdopen(saved, "w")
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stdout = previous
        os.dup2(saved, 1)
        _json_stream.close()
        _json_stream = None


def emit(record: dict[str, Any]) -> None:
    stream = _json_stream or sys.stdout
    stream.write(json.dumps(record, allow_nan=False) + "\n")
    stream.flush()


def layer_rows(result: CompileResult) -> list[dict[str, Any]]:
    """Every conv2d / linear layer as the artifact holds it; float layers have kind 'float32' and no bits."""
    from .compile import weight_bytes

    sizes = {name: (fp32, packed) for name, fp32, packed in weight_bytes(result)}
    rows = []
    for info in result.source.layers:
        layer = result.scheme.layers.get(info.name)
        numel = result.source.gm.get_parameter(info.weight).numel()
        row = {"name": info.name, "op": info.op, "fp32_bytes": 4 * numel}
        if layer is None:
            row |= {"method": None, "kind": "float32", "wbits": None, "abits": None, "kernel": "tvm",
                    "bytes": 4 * numel, "note": result.scheme.kept_float.get(info.name)}
        else:
            method = result.plan.layers[info.name].method if result.plan else result.config.method
            row |= {"method": method, "kind": layer.weight.kind.value, "wbits": layer.weight.bits,
                    "abits": layer.act.bits, "kernel": result.kernels.get(info.name), "bytes": sizes[info.name][1],
                    "note": result.lowered.notes.get(info.name), "why": result.lowered.choices.get(info.name)}
        rows.append(row)
    return rows


def _comparison(c: Comparison | None, latency_ms: float | None) -> dict[str, Any]:
    if c is None:
        return {"agreement": None, "max_abs_diff": None, "latency_ms": None}
    return {"agreement": c.agree / c.total, "max_abs_diff": c.max_diff, "latency_ms": latency_ms}


def compile_record(result: CompileResult, ev: Evaluation, report: Path | None = None) -> dict[str, Any]:
    from .plan import to_json as plan_json
    from .report import compare

    src = result.source
    comparison = compare(ev.compiled, ev.reference, src.eval_y) if ev.compiled is not None else None

    def accuracy(outputs):
        return None if src.eval_y is None else float((outputs.reshape(len(outputs), -1).argmax(1) == src.eval_y).mean())

    return {
        "command": "compile", "artifact": str(result.artifact), "target": result.target.name, "model": src.name,
        "config": vars(result.config), "layers": layer_rows(result),
        "accuracy": {"fp32": accuracy(ev.fp32), "reference": accuracy(ev.reference),
                     "compiled": accuracy(ev.compiled) if ev.compiled is not None else None},
        **_comparison(comparison, ev.latency_ms), "where": ev.where,
        "tuned_functions": result.tuned, "notes": src.notes, "report": str(report) if report else None,
        "plan": json.loads(plan_json(result.plan)) if result.plan else None,
    }


def run_record(command: str, artifact: Path, meta: dict, c: Comparison, latency_ms: float, where: str) -> dict[str, Any]:
    return {"command": command, "artifact": str(artifact), "target": meta["target"], "model": meta["model"],
            "layers": meta.get("layer_table", []), **_comparison(c, latency_ms), "accuracy": c.accuracy, "where": where}


def tune_record(results: list[TaskResult], source, config, target: str, log_dir: Path) -> dict[str, Any]:
    """Tuning writes records, not an artifact (`artifact` is null); `layers` gives each layer's bits as
    compile will choose them (kind, kernel and bytes are decided by compile: null here)."""
    import warnings

    from .quantize import plan_layers
    from .scheme import QuantScheme

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tune already warned about the layers kept in float
        planned = {info.name: (w, a) for info, w, a in plan_layers(source.layers, config, QuantScheme())}
    layers = [{"name": info.name, "op": info.op, "method": config.method if info.name in planned else None,
               "kind": None, "wbits": planned.get(info.name, (None, None))[0],
               "abits": planned.get(info.name, (None, None))[1], "kernel": None, "bytes": None}
              for info in source.layers]
    tasks = [{"name": r.name, "untuned_ms": r.untuned_ms, "best_ms": r.best_ms, "records": r.records,
              "measured": r.measured, "failed": r.failed} for r in results]
    return {"command": "tune", "artifact": None, "target": target, "model": source.name, "log_dir": str(log_dir),
            "layers": layers, "tasks": tasks}
