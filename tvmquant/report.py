"""Readable terminal output: the compile summary, the device check of `run`/`deploy`, the tuning summary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .compile import CompileResult, Evaluation, weight_bytes
from .sizes import code_bytes, ratio_text, size_note
from .outputs import sidecar_paths

if TYPE_CHECKING:
    from .tune import TaskResult


@dataclass
class Comparison:
    """Compiled outputs against the quantized reference (and labels, when known)."""

    total: int
    agree: int  # samples whose predicted class (argmax) matches the reference's
    max_diff: float
    max_rel_diff: float
    accuracy: float | None


def compare(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> Comparison:
    flat_out, flat_ref = outputs.reshape(len(outputs), -1), reference.reshape(len(reference), -1)
    diff = np.abs(flat_out - flat_ref)
    scale = np.maximum(np.abs(flat_ref).max(), 1e-12)
    accuracy = float((flat_out.argmax(1) == labels).mean()) if labels is not None else None
    return Comparison(
        total=len(outputs),
        agree=int((flat_out.argmax(1) == flat_ref.argmax(1)).sum()),
        max_diff=float(diff.max()),
        max_rel_diff=float(diff.max() / scale),
        accuracy=accuracy,
    )


def print_comparison(c: Comparison, data_label: str) -> None:
    acc = f", accuracy {100 * c.accuracy:.2f} %" if c.accuracy is not None else ""
    print(f"on {data_label}: top-1 agreement with the quantized reference {c.agree}/{c.total}{acc}")
    print(f"max |compiled - reference| = {c.max_diff:.3g} ({c.max_rel_diff:.2g} of the largest output)")


def _accuracy(outputs: np.ndarray, labels: np.ndarray | None) -> str:
    if labels is None:
        return "n/a (no labels)"
    return f"{100 * float((outputs.reshape(len(outputs), -1).argmax(1) == labels).mean()):6.2f} %"


def _kb(n: int) -> str:
    return f"{n / 1024:8.1f} KB"


def print_compile_summary(result: CompileResult, ev: Evaluation, rpc_address: str | None) -> None:
    """Layers and kernels, weight sizes, accuracy of fp32 / reference / compiled (`ev`, from
    evaluation.evaluate: this only prints), and where the artifact is."""
    src, cfg, scheme = result.source, result.config, result.scheme
    first_last = "fp32" if cfg.first_last_bits is None else f"W{cfg.first_last_bits}A{cfg.first_last_bits}"
    what = (f"{cfg.method} W{cfg.wbits}A{cfg.abits} (first/last layer: {first_last})" if result.plan is None
            else "per-layer plan (method and bits per layer: see the plan below)")
    print(f"\n{src.name} -> {result.target.name}: {what}")
    if src.folded_bn:
        print(f"BatchNorm folded into: {', '.join(src.folded_bn)}")
    for note in src.notes:
        print(f"note: {note}")
    sizes = {name: (fp32, packed) for name, fp32, packed in weight_bytes(result)}
    width = max([len("layer"), *(len(info.name) for info in src.layers)]) + 2
    print(f"\n  {'layer':<{width}}{'op':<8}{'weight':<16}{'quantized as':<18}{'kernel':<12}{'fp32':>11}{'codes':>11}"
          f"{'deployed':>11}")
    size_notes = []
    for info in src.layers:
        layer = scheme.layers.get(info.name)
        weight_shape = tuple(src.gm.get_parameter(info.weight).shape)
        shape = "x".join(map(str, weight_shape))
        if layer is None:
            print(f"  {info.name:<{width}}{info.op:<8}{shape:<16}{'float32':<18}{'tvm':<12}   ({scheme.kept_float[info.name]})")
            continue
        fp32, packed = sizes[info.name]
        kernel = result.kernels.get(info.name, "?")
        codes = code_bytes(fp32 // 4, layer.weight.bits)
        print(f"  {info.name:<{width}}{info.op:<8}{shape:<16}{layer.describe():<18}{kernel:<12}{_kb(fp32):>11}"
              f"{_kb(codes):>11}{_kb(packed):>11}")
        note = size_note(info.name, kernel, info.op, weight_shape, layer.weight.bits, fp32, packed)
        if note:
            size_notes.append(note)
    total_fp32 = sum(f for f, _ in sizes.values())
    total_packed = sum(p for _, p in sizes.values())
    if total_packed:
        print(f"  {'quantized weights total':<{width + 54}}{_kb(total_fp32):>11}{'':>11}{_kb(total_packed):>11}"
              f"  ({ratio_text(total_fp32, total_packed)})")
    print("  (codes: bits x weights; deployed: the kernel's constants in the artifact, packed codes and per-channel data)")
    for note in size_notes:
        print(f"  note: {note}")

    for name, note in result.lowered.notes.items():
        print(f"  note: {name} runs on {result.kernels[name]} ({note})")
    for name, why in result.lowered.choices.items():
        print(f"  kernel: {name} runs on {result.kernels[name]} ({why})")

    labels = src.eval_y
    if result.tuning_logs:
        print(f"\ntuning records applied from {', '.join(map(str, result.tuning_logs))}: {len(result.tuned)} function(s) "
              f"({', '.join(result.tuned) or 'none'}); no tuning done here")
        if result.untuned_faster:
            print(f"  kept untuned (faster than their best record): {', '.join(result.untuned_faster)}")
    print(f"\naccuracy on {src.eval_label}:")
    print(f"  fp32 (PyTorch)                 {_accuracy(ev.fp32, labels)}")
    print(f"  quantized reference (PyTorch)  {_accuracy(ev.reference, labels)}")
    if ev.compiled is None:
        print(f"  compiled module                {ev.where}")
    else:
        c = compare(ev.compiled, ev.reference, labels)
        print(f"  compiled module (TVM)          {_accuracy(ev.compiled, labels)}   on {ev.where}")
        print(f"  compiled vs reference: top-1 agreement {c.agree}/{c.total}, max |diff| {c.max_diff:.3g}"
              f" ({c.max_rel_diff:.2g} relative)")
        print(f"  latency: {ev.latency_ms:.3f} ms per batch of {src.batch_size} (TVM time evaluator, median)")
    size = result.artifact.stat().st_size
    meta, data = sidecar_paths(result.artifact)
    print(f"\nartifact: {result.artifact} ({size / 1024:.0f} KB, weights inside, linked with {result.linked_with}; "
          f"metadata and check data in {meta.name}, {data.name})")
    if result.target.runs == "rpc":
        print(f"run it:   python -m tvmquant run --target {result.target.name} --rpc {rpc_address or 'HOST:PORT'} {result.artifact}")


def print_tune_summary(results: list[TaskResult], target: str, log_dir: Path) -> None:
    """Best latency per task against the untuned build, as measured on the device."""
    def ms(value: float | None) -> str:
        return f"{value:.4f}" if value is not None else "-"

    print(f"\n{'task':<38}{'untuned ms':>12}{'best ms':>12}{'speedup':>9}{'records':>9}{'this run':>10}")
    for r in results:
        speedup = f"{r.untuned_ms / r.best_ms:.2f}x" if r.untuned_ms and r.best_ms else "-"
        run = f"{r.measured}" + (f" ({r.failed} failed)" if r.failed else "")
        print(f"{r.name:<38}{ms(r.untuned_ms):>12}{ms(r.best_ms):>12}{speedup:>9}{r.records:>9}{run:>10}")
    failed = sum(r.failed for r in results)
    print(f"\ndatabase: {log_dir} ({sum(r.records for r in results)} records for this model"
          + (f"; {failed} trial(s) failed this run and are recorded as failures" if failed else "") + ")")
