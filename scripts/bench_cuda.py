"""tvmquant's CUDA kernels and compiled models against PyTorch fp16 (cuBLAS / cuDNN) on one GPU, side by side.

Needs a CUDA GPU (TVM's tvm.cuda()) and, for the PyTorch columns, a CUDA build of torch; run it on a machine
the `device` tool lends (scripts/gpu_check.sh runs the gpu tests and this). Every variant runs in one
process, interleaved round by round; we report medians over rounds and ratios (PyTorch time / ours, > 1
means tvmquant is faster). Kernel times include quantizing (and bit-packing) the float32 input, as in a
compiled model.

  - GEMV 4096x4096 (batch 1 and 16): every kernel family (bitserial W2A8, lut W2A8, shift W3A8, multipoint
    W3A8, dequant W2A8, int8 W8A8 with __dp4a) vs torch.nn.functional.linear in fp16. Goal (issue 14):
    W2A8 >= 4x fp16.
  - end to end: the built-in digits CNN W2A2, and ResNet-18 W2A2 / W4A4 (with torchvision installed),
    batch 1 and 16, vs the fp32 model in fp16 with cuDNN, and with --float16 the same builds with the float32
    ops that remain (bias, ReLU, residual adds, pooling) in float16. Goal: >= PyTorch fp16.

Each row is printed, and the JSON rewritten, as soon as it is measured, so a run cut short keeps what it has.
`--build-only` builds every variant without timing anything (no GPU needed): the CPU-only part.

    python scripts/bench_cuda.py [--arch sm_90] [--rounds 7] [--json out.json] [--no-models] [--float16]
                                 [--build-only]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import tvm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cuda_cases import unscheduled  # noqa: E402  (the tests' random layers of each family)

from tvmquant import pipeline  # noqa: E402
from tvmquant.cuda import toolkit  # noqa: E402
from tvmquant.cuda.target import gpu_present, with_arch  # noqa: E402
from tvmquant.target import load_target  # noqa: E402

GEMV_FAMILIES = [("bitserial", (2, 8)), ("lut", (2, 8)), ("shift", (3, 8)), ("multipoint", (3, 8)),
                 ("dequant", (2, 8)), ("int8", (8, 8))]


def _build_kernel(family: str, bits: tuple[int, int], shape: tuple, spec) -> tuple:
    """(library, KernelCall) of the family's CUDA kernel on a random layer of `shape`, scheduled as compile
    schedules it."""
    _, call = unscheduled(family, shape, bits=bits)
    mod = pipeline.default_schedules(tvm.IRModule({"main": call.prim}), spec)
    return tvm.compile(mod, spec.tvm_target), call


def _tvm_kernel(family: str, bits: tuple[int, int], shape: tuple, spec) -> callable:
    """A timer (seconds per call) of the family's CUDA kernel on a random layer of `shape`."""
    lib, call = _build_kernel(family, bits, shape, spec)
    dev = tvm.cuda()
    n, c, h, w, o = shape[:5]
    args = [tvm.runtime.tensor(np.random.default_rng(0).standard_normal((n, c, h, w)).astype(np.float32), dev)]
    args += [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in call.consts]
    out = tvm.runtime.tensor(np.zeros((n, o, 1, 1), np.float32), dev)
    timer = lib.mod.time_evaluator("main", dev, number=20, repeat=1)
    return lambda: timer(*args, out).mean


def _torch_timer(fn) -> callable:
    """Seconds per call of fn() on the GPU, by CUDA events over 20 calls."""
    def timed() -> float:
        fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 20 / 1e3
    return timed


def _medians(variants: dict, rounds: int) -> dict[str, float]:
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, timer in variants.items():
            times[name].append(timer())
    return {name: float(np.median(t)) for name, t in times.items()}


@dataclass
class Bench:
    """What to run and where the rows go: each one printed and the JSON rewritten as soon as it is measured."""

    spec: object  # the cuda TargetSpec
    rounds: int
    torch_cuda: bool
    build_only: bool
    float16: bool
    json_path: Path | None
    header: dict
    rows: list = field(default_factory=list)

    def emit(self, row: dict) -> None:
        self.rows.append(row)
        ms = row["ms"]
        peer = next((v for k, v in ms.items() if k.startswith("torch")), None)
        cells = "  ".join(f"{k} {v:.4f} ms" + (f" ({peer / v:.2f}x)" if peer and not k.startswith("torch") else "")
                          for k, v in ms.items())
        built = f"built: {', '.join(row['built'])}" if row.get("built") else ""
        print(f"{row['case']:32s} {cells}{built} {row.get('note', '')}", flush=True)
        if self.json_path:
            self.json_path.write_text(json.dumps({**self.header, "rows": self.rows}, indent=1))

    def measure(self, case: str, variants: dict) -> None:
        """Time the variants (name -> timer), or with --build-only record that they were built."""
        if self.build_only:
            self.emit({"case": case, "ms": {}, "built": list(variants)})
            return
        medians = _medians({name: make() for name, make in variants.items()}, self.rounds)
        self.emit({"case": case, "ms": {k: 1e3 * v for k, v in medians.items()}})


def gemv(bench: Bench) -> None:
    spec = bench.spec
    for batch in (1, 16):
        shape = (batch, 4096, 1, 1, 4096, (1, 1), (1, 1), (0, 0))
        if bench.build_only:
            for f, b in GEMV_FAMILIES:
                _build_kernel(f, b, shape, spec)
        variants = {f"{f} W{b[0]}A{b[1]}": (lambda f=f, b=b: _tvm_kernel(f, b, shape, spec)) for f, b in GEMV_FAMILIES}
        if bench.torch_cuda:
            x = torch.randn(batch, 4096, device="cuda", dtype=torch.float16)
            w = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
            variants["torch fp16"] = lambda: _torch_timer(lambda: torch.nn.functional.linear(x, w))
        bench.measure(f"GEMV 4096x4096 batch {batch}", variants)


def _model_row(bench: Bench, name: str, module: torch.nn.Module, shape: tuple, bits: int, calib: np.ndarray,
               folder: Path) -> None:
    from tvmquant.compile import compile_model, load_source
    from tvmquant.cuda.target import with_float16
    from tvmquant.quantize import QuantConfig

    source = load_source(module, shape, calib=calib, eval_x=calib[: shape[0]])
    x = calib[: shape[0]]
    variants = {}
    for half in (False, True) if bench.float16 else (False,):
        label = f"tvmquant W{bits}A{bits}" + (" --float16" if half else "")
        out = folder / f"{name}-{shape[0]}{'-fp16' if half else ''}.so"
        result = compile_model(source, QuantConfig(bits, bits), with_float16(bench.spec, half), out)
        variants[label] = lambda artifact=result.artifact: _artifact_timer(artifact, x)
    if bench.torch_cuda:
        variants["torch fp16 (cuDNN)"] = lambda: _torch_model_timer(module, x)
    bench.measure(f"{name} batch {shape[0]}", variants)


def _artifact_timer(artifact: Path, x: np.ndarray) -> callable:
    from tvmquant.rpc import DeviceModule

    compiled = DeviceModule.local(artifact, tvm.cuda())
    return lambda: compiled.latency_ms(x, number=10, repeat=1) / 1e3


def _torch_model_timer(module: torch.nn.Module, x: np.ndarray) -> callable:
    half = module.eval().half().cuda()
    xt = torch.from_numpy(x).half().cuda()
    torch.backends.cudnn.benchmark = True
    return _torch_timer(lambda: half(xt))


def models(bench: Bench) -> None:
    from tvmquant.models import digits

    folder = Path(tempfile.mkdtemp(prefix="tvmquant-bench-cuda-"))
    calib = digits.load_split("calib")[0]
    for batch in (1, 16):
        _model_row(bench, "digits_cnn", digits.load_model(), (batch, *digits.INPUT_SHAPE[1:]), 2, calib, folder)
    try:
        import torchvision
    except ImportError:
        bench.emit({"case": "ResNet-18", "ms": {}, "note": "torchvision not installed: not run"})
        return
    images = np.random.default_rng(0).standard_normal((16, 3, 224, 224)).astype(np.float32)
    for bits in (2, 4):
        for batch in (1, 16):
            net = torchvision.models.resnet18(weights=None)
            _model_row(bench, f"resnet18 W{bits}A{bits}", net, (batch, 3, 224, 224), bits, images, folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sm_80", help="CUDA architecture to build for (default: sm_80)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--no-models", action="store_true", help="kernels only")
    parser.add_argument("--float16", action="store_true", help="also time each model built with --float16")
    parser.add_argument("--build-only", action="store_true", help="build every variant, time nothing (no GPU needed)")
    args = parser.parse_args()
    if not args.build_only and not gpu_present():
        print("bench_cuda: no CUDA GPU here (tvm.cuda().exist is False): nothing measured (--build-only builds)",
              file=sys.stderr)
        return 2
    toolkit.configure()
    torch_cuda = not args.build_only and torch.cuda.is_available()
    header = {"gpu": tvm.cuda().device_name if not args.build_only else None, "arch": args.arch,
              "torch_cuda": torch_cuda, "rounds": args.rounds, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(header), flush=True)
    bench = Bench(with_arch(load_target("cuda"), args.arch), args.rounds, torch_cuda, args.build_only, args.float16,
                  args.json, header)
    gemv(bench)
    if not args.no_models:
        models(bench)
    return 0


if __name__ == "__main__":
    sys.exit(main())
