"""tvmquant's CUDA kernels and compiled models against PyTorch fp16 (cuBLAS / cuDNN) on one GPU, side by side.

Needs a CUDA GPU (TVM's tvm.cuda()) and, for the PyTorch columns, a CUDA build of torch; run it on a machine
the `device` tool lends (scripts/gpu_check.sh runs the gpu tests and this). Every variant runs in one
process, interleaved round by round; we report medians over rounds and ratios (PyTorch time / ours, > 1
means tvmquant is faster). Kernel times include quantizing (and bit-packing) the float32 input, as in a
compiled model.

  - GEMV 4096x4096 (batch 1 and 16): every kernel family (bitserial W2A8, lut W2A8, shift W3A8, multipoint
    W3A8, dequant W2A8) vs torch.nn.functional.linear in fp16. Goal (issue 14): W2A8 >= 4x fp16.
  - end to end: the built-in digits CNN W2A2, and ResNet-18 W2A2 / W4A4 (with torchvision installed),
    batch 1 and 16, vs the fp32 model in fp16 with cuDNN. Goal: >= PyTorch fp16.

    python scripts/bench_cuda.py [--arch sm_90] [--rounds 7] [--json out.json] [--no-models]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
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
                 ("dequant", (2, 8))]


def _tvm_kernel(family: str, bits: tuple[int, int], shape: tuple, spec) -> callable:
    """A timer (seconds per call) of the family's CUDA kernel on a random layer of `shape`."""
    _, call = unscheduled(family, shape, bits=bits)
    mod = pipeline.default_schedules(tvm.IRModule({"main": call.prim}), spec)  # as compile schedules it
    lib = tvm.compile(mod, spec.tvm_target)
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


def gemv(spec, rounds: int, torch_cuda: bool) -> list[dict]:
    rows = []
    for batch in (1, 16):
        shape = (batch, 4096, 1, 1, 4096, (1, 1), (1, 1), (0, 0))
        variants = {f"{f} W{b[0]}A{b[1]}": _tvm_kernel(f, b, shape, spec) for f, b in GEMV_FAMILIES}
        if torch_cuda:
            x = torch.randn(batch, 4096, device="cuda", dtype=torch.float16)
            w = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
            variants["torch fp16"] = _torch_timer(lambda: torch.nn.functional.linear(x, w))
        medians = _medians(variants, rounds)
        rows.append({"case": f"GEMV 4096x4096 batch {batch}", "ms": {k: 1e3 * v for k, v in medians.items()}})
    return rows


def _model_row(name: str, module: torch.nn.Module, shape: tuple, bits: int, spec, rounds: int, torch_cuda: bool,
               calib: np.ndarray, folder: Path) -> dict:
    from tvmquant.compile import compile_model, load_source
    from tvmquant.quantize import QuantConfig
    from tvmquant.rpc import DeviceModule

    source = load_source(module, shape, calib=calib, eval_x=calib[: shape[0]])
    result = compile_model(source, QuantConfig(bits, bits), spec, folder / f"{name}-{shape[0]}.so")
    compiled = DeviceModule.local(result.artifact, tvm.cuda())
    x = calib[: shape[0]]
    variants = {f"tvmquant W{bits}A{bits}": lambda: compiled.latency_ms(x, number=10, repeat=1) / 1e3}
    if torch_cuda:
        half = module.eval().half().cuda()
        xt = torch.from_numpy(x).half().cuda()
        torch.backends.cudnn.benchmark = True
        variants["torch fp16 (cuDNN)"] = _torch_timer(lambda: half(xt))
    medians = _medians(variants, rounds)
    return {"case": f"{name} batch {shape[0]}", "ms": {k: 1e3 * v for k, v in medians.items()}}


def models(spec, rounds: int, torch_cuda: bool) -> list[dict]:
    from tvmquant.models import digits

    rows, folder = [], Path(tempfile.mkdtemp(prefix="tvmquant-bench-cuda-"))
    calib = digits.load_split("calib")[0]
    for batch in (1, 16):
        rows.append(_model_row("digits_cnn", digits.load_model(), (batch, *digits.INPUT_SHAPE[1:]), 2, spec,
                               rounds, torch_cuda, calib, folder))
    try:
        import torchvision
    except ImportError:
        rows.append({"case": "ResNet-18", "ms": {}, "note": "torchvision not installed: not run"})
        return rows
    images = np.random.default_rng(0).standard_normal((16, 3, 224, 224)).astype(np.float32)
    for bits in (2, 4):
        for batch in (1, 16):
            net = torchvision.models.resnet18(weights=None)
            rows.append(_model_row(f"resnet18 W{bits}A{bits}", net, (batch, 3, 224, 224), bits, spec, rounds,
                                   torch_cuda, images, folder))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sm_80", help="CUDA architecture to build for (default: sm_80)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--no-models", action="store_true", help="kernels only")
    args = parser.parse_args()
    if not gpu_present():
        print("bench_cuda: no CUDA GPU here (tvm.cuda().exist is False): nothing measured", file=sys.stderr)
        return 2
    toolkit.configure()
    spec = with_arch(load_target("cuda"), args.arch)
    torch_cuda = torch.cuda.is_available()
    rows = gemv(spec, args.rounds, torch_cuda)
    if not args.no_models:
        rows += models(spec, args.rounds, torch_cuda)
    device = tvm.cuda()
    header = {"gpu": device.device_name, "arch": args.arch, "torch_cuda": torch_cuda, "rounds": args.rounds,
              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(header))
    for row in rows:
        ms = row["ms"]
        peer = next((v for k, v in ms.items() if k.startswith("torch")), None)
        cells = "  ".join(f"{k} {v:.4f} ms" + (f" ({peer / v:.2f}x)" if peer and not k.startswith("torch") else "")
                          for k, v in ms.items())
        print(f"{row['case']:32s} {cells} {row.get('note', '')}")
    if args.json:
        args.json.write_text(json.dumps({**header, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
