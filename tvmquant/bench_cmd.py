"""`bench ARTIFACT`: the compiled module against PyTorch fp32 (and ONNX Runtime int8 when installed) on this
machine, interleaved, with the compiled module's per-layer profile.

Every variant runs on the inputs saved beside the artifact, one batch. Each round times every variant once,
in a rotated order, for at least `min_time` seconds of calls; the report gives the median over rounds and the
ratio to PyTorch fp32. Before timing, each variant's predictions are checked (the artifact against its
quantized reference, ONNX Runtime int8 against fp32), so a fast wrong answer is visible.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import UserError

if TYPE_CHECKING:
    from .compile import ModelSource


@dataclass
class BenchResult:
    batch: int
    rounds: int
    median_ms: dict[str, float]  # variant -> median ms per batch
    checks: dict[str, str]  # variant -> what its outputs were checked against, and the result
    missing: dict[str, str] = field(default_factory=dict)  # variant -> why it was not timed
    functions_ms: dict[str, float] = field(default_factory=dict)  # compiled function -> ms per call


def time_call(fn: Callable[[], object], min_time: float) -> float:
    """Seconds per call: calls repeated until min_time has passed (at least one)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / calls


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, min_time: float) -> dict[str, float]:
    """Median ms per variant over `rounds`, each round timing every variant once in a rotated order."""
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            samples[name].append(1e3 * time_call(variants[name], min_time))
    return {name: statistics.median(values) for name, values in samples.items()}


def _top1(y: np.ndarray) -> np.ndarray:
    return y.reshape(len(y), -1).argmax(1)


def plain_graph(source: ModelSource):
    """The folded fp32 graph as a plain GraphModule: torch.export's unlifted module checks its inputs on every
    call (measured 28 ms against 0.5 ms for the digits CNN) and cannot be put in eval mode for torch.onnx."""
    from torch import fx

    return fx.GraphModule(source.gm, source.gm.graph)


def _ort_int8(source: ModelSource, x: np.ndarray, work: Path) -> Callable[[np.ndarray], np.ndarray] | str:
    """ONNX Runtime's static int8 (QDQ, per channel) of the same folded fp32 graph, or why it is unavailable."""
    try:
        import onnxruntime
        from onnxruntime import quantization
    except ImportError:
        return "onnxruntime not installed (pip install 'tvmquant[bench]')"
    import warnings

    import torch

    fp32_path, int8_path = work / "fp32.onnx", work / "int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(plain_graph(source), (torch.from_numpy(x),), str(fp32_path), dynamo=False, input_names=["x"])
    batches = iter([{"x": source.calib[i:i + len(x)]} for i in range(0, len(source.calib) - len(x) + 1, len(x))])

    class Reader(quantization.CalibrationDataReader):
        def get_next(self):
            return next(batches, None)

    logging.disable(logging.WARNING)  # its advice to pre-process the model, on the root logger
    try:
        quantization.quantize_static(str(fp32_path), str(int8_path), Reader(), quant_format=quantization.QuantFormat.QDQ,
                                     per_channel=True, weight_type=quantization.QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see cli_eval_bench.run_bench
    session = onnxruntime.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"x": batch})[0]


def bench(artifact: Path, source: ModelSource, rounds: int = 10, min_time: float = 0.05) -> BenchResult:
    """Time the artifact (here) against the model it was compiled from."""
    import torch

    from .batching import run_batched
    from .compile import read_sidecar
    from .profile import profile_functions
    from .device_run import DeviceAddress, open_module
    from .target import load_target

    meta, data = read_sidecar(artifact)
    batch = meta["input_shape"][0]
    x = np.ascontiguousarray(data["inputs"][:batch], dtype=np.float32)
    if len(x) < batch:
        raise UserError(f"{artifact}: its saved inputs hold {len(x)} samples, fewer than one batch of {batch}")
    if tuple(source.input_shape) != tuple(meta["input_shape"]):
        raise UserError(f"the model's input {source.input_shape} is not the artifact's {tuple(meta['input_shape'])}")
    module = open_module(load_target(meta["target"]), artifact, DeviceAddress())
    graph = plain_graph(source)

    def fp32_batch(chunk: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return graph(torch.from_numpy(chunk)).numpy()

    variants: dict[str, Callable[[], object]] = {"tvmquant (this artifact)": lambda: module(x), "PyTorch fp32": lambda: fp32_batch(x)}
    inputs = data["inputs"]
    reference = run_batched(fp32_batch, inputs, batch)
    checks = {
        "tvmquant (this artifact)": _check(run_batched(module, inputs, batch), data["reference"], "its quantized reference"),
        "PyTorch fp32": "the model the artifact was compiled from",
    }
    missing = {}
    with tempfile.TemporaryDirectory(prefix="tvmquant-bench-") as work:
        ort = _ort_int8(source, x, Path(work))
        if isinstance(ort, str):
            missing["ONNX Runtime int8"] = ort
        else:
            variants["ONNX Runtime int8"] = lambda: ort(x)
            checks["ONNX Runtime int8"] = _check(run_batched(ort, inputs, batch), reference, "PyTorch fp32")
        median = interleaved(variants, rounds, min_time)
    return BenchResult(batch, rounds, median, checks, missing, profile_functions(artifact, x))


def _check(outputs: np.ndarray, against: np.ndarray, what: str) -> str:
    agree = int((_top1(outputs) == _top1(against)).sum())
    return f"top-1 agreement with {what} {agree}/{len(outputs)}, max |diff| {float(np.abs(outputs - against).max()):.3g}"


def print_bench(result: BenchResult, artifact: Path) -> None:
    base = result.median_ms["PyTorch fp32"]
    print(f"\n{artifact}: one batch of {result.batch}, median of {result.rounds} interleaved rounds on this machine")
    width = max(len(name) for name in [*result.median_ms, *result.missing]) + 2
    print(f"  {'variant':<{width}}{'ms':>10}{'vs fp32':>10}   checked")
    for name, ms in result.median_ms.items():
        print(f"  {name:<{width}}{ms:>10.4f}{base / ms:>9.2f}x   {result.checks[name]}")
    for name, why in result.missing.items():
        print(f"  {name:<{width}}{'-':>10}{'-':>10}   not timed: {why}")
    total = sum(result.functions_ms.values())
    print(f"\nper-function profile of the artifact (median ms per call, VM instrument; {total:.4f} ms in all):")
    fwidth = max(len(name) for name in result.functions_ms) + 2
    for name, ms in sorted(result.functions_ms.items(), key=lambda item: -item[1]):
        print(f"  {name:<{fwidth}}{ms:>10.4f}  {100 * ms / total:5.1f} %")
