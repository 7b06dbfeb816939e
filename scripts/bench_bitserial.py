"""Bit-serial conv on the ResNet-18 3x3 convs vs PyTorch fp32 and PyTorch int8 (fbgemm), side by side.

All variants run in one process, interleaved (one timing of each per round), so machine noise hits them alike;
we report medians over rounds and ratios (their time / bit-serial time, >1 means bit-serial is faster). The
bit-serial time includes quantizing and bit-packing the float input (float32 in, float32 out, as in a compiled
model); the int8 time likewise includes quantize_per_tensor and dequantize around fbgemm's quantized conv.

    python scripts/bench_bitserial.py [--rounds 7] [--threads 2] [--bits W2A2 W1A1 ...]
        [--before /tmp/bitserial_before.py]   # also time another version of the kernel module, e.g.
            # git show main:tvmquant/kernels/bitserial.py > /tmp/bitserial_before.py, with its relative
            # imports (from .. / ..packing / ..scheme / .family / .geometry) made absolute (tvmquant.…); it must
            # have this version's API (build_primfunc(cfg), schedule(func, target), runtime act inputs)
        [--tvm-fp32]                          # also time TVM's own untuned fp32 conv
        [--cpu-time]                          # process CPU time instead of wall time (use with --threads 1)

On a shared, loaded machine wall times of 2-thread runs swing by 10x; single-thread CPU time per call
(`--threads 1 --cpu-time`) is what stays comparable between variants.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from types import ModuleType

import numpy as np
import torch
import tvm

from tvmquant.kernels import bitserial
from tvmquant.target import load_target

# name, (N, C, H, W, O, kernel, stride, padding)
LAYERS = [
    ("56x56x64", (1, 64, 56, 56, 64, (3, 3), (1, 1), (1, 1))),
    ("28x28x128", (1, 128, 28, 28, 128, (3, 3), (1, 1), (1, 1))),
    ("14x14x256", (1, 256, 14, 14, 256, (3, 3), (1, 1), (1, 1))),
    ("7x7x512", (1, 512, 7, 7, 512, (3, 3), (1, 1), (1, 1))),
]
BITS = ["W1A1", "W2A2", "W1A2", "W2A4", "W4A4"]


def _torch_fp32(shape):
    n, c, h, w, o, k, s, p = shape
    conv = torch.nn.Conv2d(c, o, k, stride=s, padding=p, bias=False).eval()
    x = torch.randn(n, c, h, w)
    return lambda: conv(x)


def _torch_int8(shape):
    """fbgemm static quantized conv, per-channel int8 weights, float in and out like the bit-serial kernel."""
    torch.backends.quantized.engine = "fbgemm"
    n, c, h, w, o, k, s, p = shape
    weight = torch.randn(o, c, *k)
    scales = weight.abs().amax(dim=(1, 2, 3)) / 127
    qweight = torch.quantize_per_channel(weight, scales, torch.zeros(o, dtype=torch.long), 0, torch.qint8)
    conv = torch.ao.nn.quantized.Conv2d(c, o, k, stride=s, padding=p, bias=False)
    conv.set_weight_bias(qweight, None)
    conv.scale, conv.zero_point = 0.05, 64
    x = torch.randn(n, c, h, w)
    return lambda: conv(torch.quantize_per_tensor(x, 0.03, 64, torch.quint8)).dequantize()


def _tvm_fp32(shape, target):
    """The same conv through TVM's own Relax path (default pipeline, untuned)."""
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    n, c, h, w, o, k, s, p = shape
    conv = torch.nn.Conv2d(c, o, k, stride=s, padding=p, bias=False).eval()
    x = torch.randn(n, c, h, w)
    mod = from_exported_program(torch.export.export(conv, (x,)), keep_params_as_input=False)
    vm = relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())
    vm.set_input("main", tvm.runtime.tensor(x.numpy()))
    return lambda: vm.invoke_stateful("main")


def _bitserial(module: ModuleType, shape, wbits: int, abits: int, target):
    cfg = module.BitserialConv2dConfig(*shape, wbits=wbits, abits=abits)
    rng = np.random.default_rng(0)
    lib = tvm.compile(tvm.IRModule({"main": module.schedule(module.build_primfunc(cfg), target)}), target)
    codes = rng.integers(0, 1 << wbits, (cfg.out_channels, cfg.reduction)).astype(np.uint8)
    args = [
        rng.standard_normal((cfg.batch, cfg.in_channels, cfg.height, cfg.width)).astype(np.float32),
        np.array([2.0], np.float32),  # the activation quantizer's runtime inputs: inv_scale, zero point
        np.array([1], np.int32),
        module.pack_weights(codes, cfg),
        codes.sum(1).astype(np.int32),
        np.full(cfg.out_channels, (1 << wbits) - 1, np.int32),
        np.ones(cfg.out_channels, np.float32),
        np.zeros((cfg.batch, cfg.out_channels, *cfg.out_hw), np.float32),
    ]
    targs = [tvm.runtime.tensor(a, tvm.cpu()) for a in args]
    return lambda: lib(*targs)


def _load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("bitserial_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _time(fn, clock=time.perf_counter, min_seconds: float = 0.05) -> float:
    """Seconds per call: repeat until min_seconds have passed (after one warm-up call)."""
    fn()
    calls, start = 0, clock()
    while True:
        fn()
        calls += 1
        elapsed = clock() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def _medians(variants: dict, rounds: int, clock) -> dict[str, float]:
    times = {k: [] for k in variants}
    with torch.no_grad():
        for _ in range(rounds):
            for key, fn in variants.items():
                times[key].append(_time(fn, clock))
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bits", nargs="+", default=BITS)
    parser.add_argument("--before", help="path of another bitserial module to time alongside")
    parser.add_argument("--tvm-fp32", action="store_true")
    parser.add_argument("--cpu-time", action="store_true")
    args = parser.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    target = load_target("x86").tvm_target
    before = _load(args.before) if args.before else None

    print(f"machine: {platform.processor() or platform.machine()}, LLVM mcpu={target.mcpu}, torch "
          f"{torch.__version__}, {args.threads} threads, {args.rounds} interleaved rounds, median "
          f"{'CPU' if args.cpu_time else 'wall'} ms; "
          "ratio = other / bit-serial")
    cols = ["fp32", "int8"] + (["tvm"] if args.tvm_fp32 else []) + (["before"] if before else [])
    print("\n| layer | bits | bit-serial ms | " + " | ".join(f"{c} ms | vs {c}" for c in cols) + " |")
    print("|---|---|---|" + "---|---|" * len(cols))
    for name, shape in LAYERS:
        for bits in args.bits:
            wb, ab = int(bits[1]), int(bits[3])
            variants = {"new": _bitserial(bitserial, shape, wb, ab, target),
                        "fp32": _torch_fp32(shape), "int8": _torch_int8(shape)}
            if args.tvm_fp32:
                variants["tvm"] = _tvm_fp32(shape, target)
            if before:
                variants["before"] = _bitserial(before, shape, wb, ab, target)
            med = _medians(variants, args.rounds, clock)
            cells = " | ".join(f"{med[c]:.3f} | {med[c] / med['new']:.2f}x" for c in cols)
            print(f"| {name} | {bits} | {med['new']:.3f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
