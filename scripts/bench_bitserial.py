"""First benchmark: bit-serial W1A1 / W2A2 conv and dense vs the same layers in TVM fp32 and PyTorch fp32.

All variants run in one process, interleaved (one timing of each per round), so machine noise hits them alike;
we report medians over rounds and ratios against PyTorch fp32. The bit-serial time includes quantizing and
bit-packing the float input (the kernel takes float32 in and gives float32 out, as in a compiled model).

    python scripts/bench_bitserial.py [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
import tvm
from tvm import relax
from tvm.relax.frontend.torch import from_exported_program

from tvmquant.kernels import bitserial
from tvmquant.kernels.bitserial import BitserialConv2dConfig
from tvmquant.target import load_target

# name, (N, C, H, W, O, kernel, stride, padding)
LAYERS = [
    ("conv 3x3 64->64 @56x56", (1, 64, 56, 56, 64, (3, 3), (1, 1), (1, 1))),
    ("conv 3x3 128->128 @28x28", (1, 128, 28, 28, 128, (3, 3), (1, 1), (1, 1))),
    ("dense 64x1024x1024", (64, 1024, 1, 1, 1024, (1, 1), (1, 1), (0, 0))),
    ("gemv 1x1024x1024", (1, 1024, 1, 1, 1024, (1, 1), (1, 1), (0, 0))),
]
BITS = [(1, 1), (2, 2)]


def _torch_layer(shape) -> tuple[torch.nn.Module, torch.Tensor]:
    n, c, h, w, o, k, s, p = shape
    if k == (1, 1) and h == w == 1:
        return torch.nn.Linear(c, o, bias=False).eval(), torch.randn(n, c)
    return torch.nn.Conv2d(c, o, k, stride=s, padding=p, bias=False).eval(), torch.randn(n, c, h, w)


def _tvm_fp32(module, x, target):
    """The same layer through TVM's own Relax path (default pipeline, untuned)."""
    ep = torch.export.export(module, (x,))
    mod = from_exported_program(ep, keep_params_as_input=False)
    vm = relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())
    arg = tvm.runtime.tensor(x.numpy())
    vm.set_input("main", arg)
    return lambda: vm.invoke_stateful("main")


def _bitserial(shape, wbits, abits, target):
    cfg = BitserialConv2dConfig(*shape, wbits=wbits, abits=abits)
    rng = np.random.default_rng(0)
    lib = tvm.compile(tvm.IRModule({"main": bitserial.build_primfunc(cfg, 2.0, 0)}), target)
    codes = rng.integers(0, 1 << wbits, (cfg.out_channels, cfg.reduction)).astype(np.uint8)
    args = [
        rng.standard_normal((cfg.batch, cfg.in_channels, cfg.height, cfg.width)).astype(np.float32),
        bitserial.pack_weights(codes, cfg),
        codes.sum(1).astype(np.int32),
        np.full(cfg.out_channels, (1 << wbits) - 1, np.int32),
        np.ones(cfg.out_channels, np.float32),
        np.zeros((cfg.batch, cfg.out_channels, *cfg.out_hw), np.float32),
    ]
    dev = tvm.cpu()
    targs = [tvm.runtime.tensor(a, dev) for a in args]
    return lambda: lib(*targs)


def _time(fn, min_seconds: float = 0.05) -> float:
    """Seconds per call: repeat until min_seconds have passed (after one warm-up call)."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    target = load_target("x86").tvm_target

    print(f"machine: {platform.processor() or platform.machine()}, LLVM mcpu={target.mcpu}, "
          f"{args.threads} threads, {args.rounds} interleaved rounds, median ms")
    print("\n| layer | torch fp32 | TVM fp32 (untuned) | W1A1 bit-serial | W2A2 bit-serial | W1A1 vs torch | W2A2 vs torch | W2A2 vs TVM fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, shape in LAYERS:
        module, x = _torch_layer(shape)
        with torch.no_grad():
            variants = {"torch": lambda: module(x), "tvm": _tvm_fp32(module, x, target)}
            for wb, ab in BITS:
                variants[f"w{wb}a{ab}"] = _bitserial(shape, wb, ab, target)
            times = {k: [] for k in variants}
            for _ in range(args.rounds):
                for key, fn in variants.items():
                    times[key].append(_time(fn))
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        print(f"| {name} | {med['torch']:.3f} | {med['tvm']:.3f} | {med['w1a1']:.3f} | {med['w2a2']:.3f} "
              f"| {med['torch'] / med['w1a1']:.2f}x | {med['torch'] / med['w2a2']:.2f}x | {med['tvm'] / med['w2a2']:.2f}x |")


if __name__ == "__main__":
    main()
