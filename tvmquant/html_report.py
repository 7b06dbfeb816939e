"""`compile --report report.html`: one self-contained HTML page (pictures embedded as base64 PNG) for a person:
per-layer table, accuracy of fp32 / quantized reference / compiled module, each layer's weight histogram with
the values its quantizer can represent overlaid, and bar charts of bytes and time per layer."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .compile import CompileResult, Evaluation
    from .scheme import WeightQuant

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 4px 10px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #eef; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; }
.grid figure { margin: 0; }
.note { color: #a60; }
"""


def channel_levels(weight: WeightQuant, channel: int) -> np.ndarray:
    """Every value output channel `channel` can take: all 2^bits codes through the layer's own dequantize
    (uniform grid, powers of two, codebook); multipoint sums of points: the distinct values it uses."""
    from .scheme import WeightKind

    if weight.kind is WeightKind.MULTIPOINT:
        return np.unique(weight.dequantize()[channel])
    codes = np.tile(np.arange(1 << weight.bits, dtype=np.uint8), (weight.out_channels, 1))
    return np.unique(dataclasses.replace(weight, codes=codes).dequantize()[channel])


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _histogram(name: str, values: np.ndarray, weight: WeightQuant | None) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    if weight is None:
        ax.hist(values.ravel(), bins=80, color="#888")
        ax.set_title(f"{name} (float32)", fontsize=9)
    else:
        rows = values.reshape(values.shape[0], -1)
        channel = int(np.abs(rows).max(axis=1).argmax())
        ax.hist(values.ravel(), bins=80, color="#7a9cc6", label="fp32 weights (all channels)")
        for i, level in enumerate(channel_levels(weight, channel)):
            ax.axvline(level, color="#c33", linewidth=0.8, alpha=0.7, label=f"levels of channel {channel}" if i == 0 else None)
        ax.set_title(f"{name}: {weight.kind.value} {weight.bits}-bit", fontsize=9)
        ax.legend(fontsize=6, loc="upper right")
    ax.tick_params(labelsize=7)
    return _png(fig)


def _bars(title: str, names: list[str], series: dict[str, list[float]], unit: str, log: bool) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(names) + 2), 3.0))
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        ax.bar(np.arange(len(names)) + i * width, values, width, label=label)
    ax.set_xticks(np.arange(len(names)) + width * (len(series) - 1) / 2, names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(unit, fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def _accuracy(outputs: np.ndarray | None, labels: np.ndarray | None) -> str:
    from .report import _accuracy as accuracy_text

    return "not run" if outputs is None else accuracy_text(outputs, labels).strip()


def _table(header: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td class=\"num\">{html.escape(c)}</td>" if i in numeric else f"<td>{html.escape(c)}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table id=\"{html.escape(header[0])}s\"><tr>{head}</tr>{body}</table>"


def check_report_path(path: Path) -> None:
    """Before compiling: matplotlib is there and the page can be written where asked."""
    from .errors import UserError

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("--report needs matplotlib: pip install 'tvmquant[report]'") from None
    if path.suffix.lower() not in (".html", ".htm") or path.is_dir():
        raise UserError(f"--report wants an .html file path, got {path}")


def write_compile_report(path: Path, result: CompileResult, ev: Evaluation) -> Path:
    """The page for a compile, with per-layer times profiled here when the target runs on this machine."""
    layer_ms = None
    if result.target.runs != "rpc":
        from .profile import layer_times, profile_functions

        src = result.source
        layer_ms = layer_times(profile_functions(result.artifact, src.eval_x[: src.batch_size]), result.kernels)
    return write_report(path, result, ev, layer_ms)


def write_report(path: Path, result: CompileResult, ev: Evaluation, layer_ms: dict[str, float] | None) -> Path:
    """Write the page; `layer_ms` is the per-layer profile (None where the module was not profiled)."""
    import matplotlib

    matplotlib.use("Agg")
    from .json_output import layer_rows
    from .report import compare
    from .sizes import code_bytes, size_note

    src, cfg = result.source, result.config
    rows, names, fp32_bytes, deployed_bytes, notes = [], [], [], [], list(src.notes)
    for row in layer_rows(result):
        ms = layer_ms.get(row["name"]) if layer_ms else None
        bits = "-" if row["wbits"] is None else f"W{row['wbits']}A{row['abits']}"
        codes = "-" if row["wbits"] is None else str(code_bytes(row["fp32_bytes"] // 4, row["wbits"]))
        rows.append([row["name"], row["op"], row["method"] or "-", row["kind"], bits, row["kernel"] or "-",
                     str(row["fp32_bytes"]), codes, str(row["bytes"]), "-" if ms is None else f"{ms:.4f}"])
        names.append(row["name"])
        fp32_bytes.append(row["fp32_bytes"])
        deployed_bytes.append(row["bytes"])
        shape = tuple(src.gm.get_parameter(next(i.weight for i in src.layers if i.name == row["name"])).shape)
        if row["wbits"] is not None:
            note = size_note(row["name"], row["kernel"], row["op"], shape, row["wbits"], row["fp32_bytes"], row["bytes"])
            notes += [note] if note else []
        if row["note"]:
            notes.append(f"{row['name']}: {row['note']}")
    table = _table(["layer", "op", "method", "weight kind", "bits", "kernel", "fp32 bytes", "code bytes",
                    "deployed bytes", "ms per call"], rows, {6, 7, 8, 9})

    labels = src.eval_y
    acc_rows = [["fp32 (PyTorch)", _accuracy(ev.fp32, labels)],
                ["quantized reference (PyTorch)", _accuracy(ev.reference, labels)],
                [f"compiled module ({ev.where})", _accuracy(ev.compiled, labels)]]
    if ev.compiled is not None:
        c = compare(ev.compiled, ev.reference, labels)
        acc_rows.append(["compiled vs reference: top-1 agreement", f"{c.agree}/{c.total}, max |diff| {c.max_diff:.3g}"])
        acc_rows.append(["latency (TVM time evaluator, median)", f"{ev.latency_ms:.3f} ms per batch of {src.batch_size}"])
    accuracy = _table(["measure", "value"], acc_rows, set())

    bytes_chart = _bars("weight bytes per layer", names, {"fp32": fp32_bytes, "deployed": deployed_bytes}, "bytes", True)
    if layer_ms:
        timed = [n for n in names if n in layer_ms]
        time_chart = f"<img alt=\"time per layer\" src=\"{_bars('time per layer', timed, {'ms per call': [layer_ms[n] for n in timed]}, 'ms', False)}\">"
    else:
        time_chart = f"<p>Not profiled: the module runs on {html.escape(ev.where)}; per-layer times are measured for targets that run on this machine.</p>"
    histograms = "".join(
        f"<figure><img alt=\"{html.escape(info.name)} weights\" "
        f"src=\"{_histogram(info.name, src.gm.get_parameter(info.weight).detach().numpy(), getattr(result.scheme.layers.get(info.name), 'weight', None))}\"></figure>"
        for info in src.layers
    )
    first_last = "fp32" if cfg.first_last_bits is None else f"W{cfg.first_last_bits}A{cfg.first_last_bits}"
    note_list = "".join(f"<li class=\"note\">{html.escape(n)}</li>" for n in notes)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tvmquant: {html.escape(src.name)} on {html.escape(result.target.name)}</title>
<style>{_STYLE}</style></head><body>
<h1>{html.escape(src.name)} &rarr; {html.escape(result.target.name)}</h1>
<p>{html.escape(cfg.method)} W{cfg.wbits}A{cfg.abits} (first/last layer: {first_last}); artifact
<code>{html.escape(str(result.artifact))}</code>; evaluated on {html.escape(src.eval_label)}.
{'BatchNorm folded into: ' + html.escape(', '.join(src.folded_bn)) + '.' if src.folded_bn else ''}</p>
<h2>Accuracy</h2>{accuracy}
<h2>Layers</h2>{table}
<p>code bytes: bits &times; weights; deployed bytes: the kernel's constants as the artifact stores them (packed
codes and per-channel data).</p>
<ul>{note_list}</ul>
<h2>Bytes and time per layer</h2><div class="grid"><img alt="bytes per layer" src="{bytes_chart}">{time_chart}</div>
<h2>Weights and their quantization levels</h2>
<p>Bars: the layer's fp32 weights (after BatchNorm folding). Red lines: every value the quantized weights of the
channel with the largest weight can take.</p>
<div class="grid">{histograms}</div>
</body></html>
"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
