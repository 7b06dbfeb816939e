"""Multipoint kernel vs the dequant fallback vs plain bit-serial (the same layer with one point) vs PyTorch fp32.

One process, interleaved repetitions, medians; ratios are what count on a shared machine.

    PYTHONPATH=. python scripts/bench_multipoint.py [--reps 11]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
import tvm

from tvmquant.kernels import bitserial, dequant, multipoint
from tvmquant.kernels.family import layer_geometry, scheduled
from tvmquant.reference import quantized_layer
from tvmquant.scheme import ActQuant, LayerScheme, WeightKind, WeightQuant
from tvmquant.target import load_target

CASES = {  # name: (N, C, H, W, O, kernel, stride, padding)
    "conv3x3 64->64 @56x56": (1, 64, 56, 56, 64, (3, 3), (1, 1), (1, 1)),
    "dense 64x1024x1024": (64, 1024, 1, 1, 1024, (1, 1), (1, 1), (0, 0)),
}


def layers(shape, wbits: int, abits: int, extra: float, rng) -> tuple[LayerScheme, LayerScheme]:
    """(multipoint layer with round(extra * O) channels on two points, the uniform layer of its first points)."""
    _, c, _, _, o, kernel, stride, padding = shape
    m = (1 << (wbits - 1)) - 1
    codes = rng.integers(0, 2 * m + 1, (2, o, c, *kernel))
    second = rng.permutation(o)[: round(extra * o)]
    coeffs = np.zeros((2, o))
    coeffs[0], coeffs[1, second] = 1.0, 1.0
    codes[1, np.setdiff1d(np.arange(o), second)] = m
    scale = rng.uniform(0.01, 0.1, (2, o))
    act = ActQuant(abits, 0.05, 1 << (abits - 1))
    op = "conv2d" if kernel != (1, 1) else "linear"
    mp = WeightQuant(WeightKind.MULTIPOINT, wbits, codes.astype(np.uint8), scale=scale,
                     zero_point=np.full((2, o), float(m)), coeffs=coeffs)
    uni = WeightQuant(WeightKind.UNIFORM, wbits, codes[0].astype(np.uint8), scale=scale[0],
                      zero_point=np.full(o, float(m)))
    return (LayerScheme("mp", op, mp, act, stride, padding), LayerScheme("uni", op, uni, act, stride, padding))


def compiled(family, layer: LayerScheme, shape, target, number: int = 5):
    """(seconds per call on a device tensor x, the output for x) for one family's default kernel."""
    geometry = layer_geometry(layer, shape[:4])
    call = scheduled(family.FAMILY, layer, geometry, target)
    lib = tvm.compile(tvm.IRModule({"main": call.prim}), target)
    dev = tvm.cpu()
    consts = [tvm.runtime.tensor(np.ascontiguousarray(c), dev) for c in call.consts]
    out = tvm.runtime.tensor(np.zeros((shape[0], geometry.out_channels, *geometry.out_hw), np.float32), dev)
    timer = lib.mod.time_evaluator("main", dev, number=number, repeat=1)
    return (lambda x: timer(x, *consts, out).mean), (lambda x: (lib(x, *consts, out), out.numpy())[1])


def torch_fp32(layer: LayerScheme, shape):
    weight = torch.from_numpy(layer.weight.dequantize().astype(np.float32))
    if layer.op == "linear":
        w2 = weight.reshape(weight.shape[0], -1)
        return lambda x: F.linear(x.reshape(x.shape[0], -1), w2)
    return lambda x: F.conv2d(x, weight, stride=layer.stride, padding=layer.padding)


def timed(fn, x, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn(x)
    return (time.perf_counter() - start) / number


def bench(case: str, shape, wbits: int, abits: int, extra: float, reps: int, target) -> dict[str, float]:
    rng = np.random.default_rng(0)
    mp_layer, uni_layer = layers(shape, wbits, abits, extra, rng)
    x = rng.standard_normal(shape[:4]).astype(np.float32)
    xt, xd = torch.from_numpy(x), tvm.runtime.tensor(x)
    run_mp, out_mp = compiled(multipoint, mp_layer, shape, target)
    want = quantized_layer(xt if mp_layer.op == "conv2d" else xt.reshape(len(x), -1), mp_layer, None).numpy()
    np.testing.assert_array_equal(out_mp(xd).reshape(want.shape), want)
    variants = {
        "multipoint": run_mp,
        "dequant": compiled(dequant, mp_layer, shape, target, number=1)[0],
        "bitserial P=1": compiled(bitserial, uni_layer, shape, target)[0],
        "torch fp32": (lambda f: lambda _: timed(f, xt, 3))(torch_fp32(mp_layer, shape)),
    }
    times = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            times[name].append(fn(xd))
    return {name: float(np.median(t)) * 1e3 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=11)
    args = parser.parse_args()
    torch.set_num_threads(2)
    target = load_target("x86").tvm_target
    print("case | bits | extra rows | multipoint ms | dequant ms | bitserial P=1 ms | torch fp32 ms | "
          "dequant/mp | mp/bitserial | torch/mp")
    for case, shape in CASES.items():
        for wbits, abits in ((2, 2), (4, 4)):
            for extra in (0.1, 0.5):
                t = bench(case, shape, wbits, abits, extra, args.reps, target)
                mp = t["multipoint"]
                print(f"{case} | W{wbits}A{abits} | {extra:.0%} | {mp:.3f} | {t['dequant']:.2f} | "
                      f"{t['bitserial P=1']:.3f} | {t['torch fp32']:.3f} | {t['dequant'] / mp:.1f}x | "
                      f"{mp / t['bitserial P=1']:.2f} | "
                      f"{t['torch fp32'] / mp:.2f}x", flush=True)


if __name__ == "__main__":
    main()
