"""Shift-add (POW2 weights) vs the dequant fallback, bit-serial W4A4 (uniform, same shape) and PyTorch fp32.

Every variant is a real layer through its family's `instantiate` (float32 in, float32 out, activation
quantization included), all in one process, interleaved (one timing of each per round), medians over rounds.

    PYTHONPATH=. python scripts/bench_shift.py [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import tvm

from tvmquant.kernels import bitserial, dequant, shift
from tvmquant.kernels.family import layer_geometry, scheduled
from tvmquant.scheme import ActQuant, LayerScheme, WeightKind, WeightQuant
from tvmquant.target import load_target

# name, (N, C, H, W), O, kernel, padding
LAYERS = [
    ("conv 3x3 64->64 @56x56", (1, 64, 56, 56), 64, (3, 3), (1, 1)),
    ("dense 64x1024x1024", (64, 1024, 1, 1), 1024, (1, 1), (0, 0)),
]
POW2_BITS = [(3, 4), (3, 8), (4, 4), (4, 8)]


def _layer(shape, out, kernel, padding, kind: WeightKind, wbits: int, abits: int) -> LayerScheme:
    rng = np.random.default_rng(wbits * 10 + abits)
    codes = rng.integers(0, 1 << wbits, (out, shape[1], *kernel)).astype(np.uint8)
    scale = rng.uniform(0.01, 0.1, out)
    if kind is WeightKind.POW2:
        weight = WeightQuant(kind, wbits, codes, scale=scale, exp_max=np.zeros(out, np.int64))
    else:
        weight = WeightQuant(kind, wbits, codes, scale=scale, zero_point=np.full(out, 7.5))
    op = "linear" if shape[2:] == (1, 1) and kernel == (1, 1) else "conv2d"
    return LayerScheme("bench", op, weight, ActQuant(abits, 0.05, 1 << (abits - 1)), (1, 1), padding)


def _kernel(family, layer: LayerScheme, shape, target):
    geometry = layer_geometry(layer, shape)
    call = scheduled(family.FAMILY, layer, geometry, target)
    lib = tvm.compile(tvm.IRModule({"main": call.prim}), target)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = np.zeros((shape[0], geometry.out_channels, *geometry.out_hw), np.float32)
    args = [tvm.runtime.tensor(a) for a in (x, *call.consts, out)]
    return lambda: lib(*args)


def _torch(shape, out, kernel, padding):
    if shape[2:] == (1, 1) and kernel == (1, 1):
        module, x = torch.nn.Linear(shape[1], out, bias=False).eval(), torch.randn(shape[0], shape[1])
    else:
        module, x = torch.nn.Conv2d(shape[1], out, kernel, padding=padding, bias=False).eval(), torch.randn(*shape)
    return lambda: module(x)


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
    print(f"{args.threads} threads, {args.rounds} interleaved rounds, median ms; ratios = other / shift")
    print("\n| layer | bits | shift | dequant | bit-serial W4A4 | torch fp32 "
          "| dequant/shift | bitserial/shift | torch/shift |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, shape, out, kernel, padding in LAYERS:
        variants = {"torch": _torch(shape, out, kernel, padding)}
        uniform = _layer(shape, out, kernel, padding, WeightKind.UNIFORM, 4, 4)
        variants["bitserial"] = _kernel(bitserial, uniform, shape, target)
        for wb, ab in POW2_BITS:
            layer = _layer(shape, out, kernel, padding, WeightKind.POW2, wb, ab)
            variants[f"shift{wb}{ab}"] = _kernel(shift, layer, shape, target)
            variants[f"dequant{wb}{ab}"] = _kernel(dequant, layer, shape, target)
        times = {k: [] for k in variants}
        with torch.no_grad():
            for _ in range(args.rounds):
                for key, fn in variants.items():
                    times[key].append(_time(fn))
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        for wb, ab in POW2_BITS:
            s, d = med[f"shift{wb}{ab}"], med[f"dequant{wb}{ab}"]
            print(f"| {name} | W{wb}A{ab} | {s:.3f} | {d:.3f} | {med['bitserial']:.3f} | {med['torch']:.3f} "
                  f"| {d / s:.1f}x | {med['bitserial'] / s:.2f}x | {med['torch'] / s:.2f}x |")


if __name__ == "__main__":
    main()
