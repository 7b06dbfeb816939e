"""`eval`: accuracy against bit width, for every method asked, on the user's data (or the built-in digits):
a table (CSV and Markdown) and a plot (PNG).

Each point is the quantized PyTorch reference (post-training; what the compiled module computes exactly, as
the compile tests check); `--target` also compiles every point and runs it here, to report the compiled
module's accuracy and its agreement with the reference.
"""

from __future__ import annotations

import csv
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import UserError

if TYPE_CHECKING:
    from .compile import ModelSource
    from .target import TargetSpec


@dataclass
class SweepPoint:
    """One (method, bits) point; `skipped` says why a point was not run (e.g. a method's minimum bits)."""

    method: str
    wbits: int
    abits: int
    accuracy: float | None = None  # of the quantized reference, when labels are known
    fp32_agreement: float | None = None  # top-1 agreement of the quantized reference with fp32
    compiled_accuracy: float | None = None
    compiled_agreement: float | None = None  # compiled vs reference, top-1
    seconds: float | None = None
    skipped: str | None = None


def _top1(outputs: np.ndarray) -> np.ndarray:
    return outputs.reshape(len(outputs), -1).argmax(1)


def sweep(source: ModelSource, methods: list[str], bits: list[int], first_last_bits: int | None,
          target: TargetSpec | None = None, work_dir: Path | None = None) -> tuple[float | None, list[SweepPoint]]:
    """(fp32 accuracy, one point per method x bits); weights and activations get the same bits."""
    from .batching import run_batched
    from .quantize import QuantConfig, quantize_model
    from .reference import ReferenceModel

    fp32_top1 = _top1(run_batched(source.fp32, source.eval_x, source.batch_size))
    labels = source.eval_y

    def accuracy(top1: np.ndarray) -> float | None:
        return None if labels is None else float((top1 == labels).mean())

    points = []
    for method in methods:
        for b in bits:
            point = SweepPoint(method, b, b)
            try:
                config = QuantConfig(b, b, first_last_bits, method)
            except UserError as exc:
                point.skipped = str(exc)
                points.append(point)
                continue
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # layers kept in float are warned about once, by load/compile
                scheme = quantize_model(source.gm, source.layers, source.calib, config, source.batch_size)
            reference = run_batched(ReferenceModel(source.gm, source.layers, scheme), source.eval_x,
                                    source.batch_size, f"{method} W{b}A{b}")
            point.accuracy, point.fp32_agreement = accuracy(_top1(reference)), float((_top1(reference) == fp32_top1).mean())
            if target is not None:
                compiled = _compiled_outputs(source, config, target, work_dir or Path("."))
                point.compiled_accuracy = accuracy(_top1(compiled))
                point.compiled_agreement = float((_top1(compiled) == _top1(reference)).mean())
            point.seconds = time.perf_counter() - start
            points.append(point)
    return accuracy(fp32_top1), points


def _compiled_outputs(source: ModelSource, config, target: TargetSpec, work_dir: Path) -> np.ndarray:
    from .compile import compile_model
    from .device_run import DeviceAddress, run_on_device

    artifact = work_dir / f"{source.name}-{config.method}-w{config.wbits}a{config.abits}.so"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = compile_model(source, config, target, artifact)
    return run_on_device(target, result.artifact, source.eval_x, source.batch_size, DeviceAddress()).outputs


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def markdown_table(fp32: float | None, points: list[SweepPoint], data_label: str) -> str:
    """Methods as rows, bit widths as columns; the metric is accuracy with labels, else agreement with fp32."""
    bits = sorted({p.wbits for p in points})
    methods = list(dict.fromkeys(p.method for p in points))
    metric = "accuracy %" if fp32 is not None else "top-1 agreement with fp32 %"
    lines = [f"{metric} of the quantized reference on {data_label}" + (f" (fp32: {_percent(fp32)} %)" if fp32 is not None else ""),
             "", "| method | " + " | ".join(f"W{b}A{b}" for b in bits) + " |",
             "| --- |" + " ---: |" * len(bits)]
    by_key = {(p.method, p.wbits): p for p in points}
    for method in methods:
        cells = []
        for b in bits:
            p = by_key[(method, b)]
            value = p.accuracy if fp32 is not None else p.fp32_agreement
            cell = "n/a" if p.skipped else _percent(value)
            if p.compiled_agreement is not None and p.compiled_agreement < 1.0:
                cell += f" (compiled agrees {_percent(p.compiled_agreement)})"
            cells.append(cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    skipped = sorted({f"{p.method} W{p.wbits}: {p.skipped}" for p in points if p.skipped})
    return "\n".join(lines + ([""] + [f"- n/a: {s}" for s in skipped] if skipped else [])) + "\n"


def write_outputs(out_dir: Path, fp32: float | None, points: list[SweepPoint], data_label: str) -> list[Path]:
    """sweep.csv (one row per point), sweep.md (the table) and sweep.png (the plot)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, png_path = out_dir / "sweep.csv", out_dir / "sweep.md", out_dir / "sweep.png"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(points[0])))
        writer.writeheader()
        writer.writerows(asdict(p) for p in points)
    md_path.write_text(markdown_table(fp32, points, data_label))
    _plot(png_path, fp32, points)
    return [csv_path, md_path, png_path]


def _plot(path: Path, fp32: float | None, points: list[SweepPoint]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(p.method for p in points):
        run = [p for p in points if p.method == method and not p.skipped]
        values = [100 * (p.accuracy if fp32 is not None else p.fp32_agreement) for p in run]
        ax.plot([p.wbits for p in run], values, marker="o", label=method)
    if fp32 is not None:
        ax.axhline(100 * fp32, color="black", linestyle="--", linewidth=1, label="fp32")
    ax.set_xlabel("weight and activation bits")
    ax.set_ylabel("accuracy %" if fp32 is not None else "top-1 agreement with fp32 %")
    ax.set_xticks(sorted({p.wbits for p in points}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
