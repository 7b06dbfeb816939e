"""Lookup-table (CODEBOOK) kernels vs the dequant fallback and PyTorch fp32 on the same layer shapes.

One process, interleaved rounds, medians; ratios are what count on a shared machine. The LUT and dequant times
include quantizing the float input (both kernels take float32 in and give float32 out). Also measures this
machine's copy bandwidth (a large numpy copy) to state the GEMV's memory ceiling: the LUT reads its index
nibbles once per call, (2^b - 1) nibbles per 4 weights per output channel.

    python scripts/bench_lut.py [--rounds 7] [--threads 2] [--bits 2] [--no-dequant]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import tvm

from tvmquant.kernels import dequant, lut
from tvmquant.kernels.dequant import DequantConv2dConfig
from tvmquant.kernels.lut import LutConv2dConfig
from tvmquant.target import load_target

LAYERS = [
    ("gemv 1x4096x4096", (1, 4096, 1, 1, 4096, (1, 1), (1, 1), (0, 0))),
    ("dense 64x1024x1024", (64, 1024, 1, 1, 1024, (1, 1), (1, 1), (0, 0))),
    ("conv 3x3 64->64 @56x56", (1, 64, 56, 56, 64, (3, 3), (1, 1), (1, 1))),
]


def _torch(shape):
    n, c, h, w, o, k, s, p = shape
    if k == (1, 1) and h == w == 1:
        module, x = torch.nn.Linear(c, o, bias=False).eval(), torch.randn(n, c)
    else:
        module, x = torch.nn.Conv2d(c, o, k, stride=s, padding=p, bias=False).eval(), torch.randn(n, c, h, w)

    def run():
        with torch.no_grad():
            module(x)

    return run


def _lib_call(prim, args, target):
    lib = tvm.compile(tvm.IRModule({"main": prim}), target)
    dev = tvm.cpu()
    targs = [tvm.runtime.tensor(a, dev) for a in args]
    return lambda: lib(*targs)


def _inputs(shape, bits):
    rng = np.random.default_rng(0)
    n, c, h, w, o, (kh, kw), *_ = shape
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    codes = rng.integers(0, 1 << bits, (o, c * kh * kw)).astype(np.uint8)
    levels = rng.standard_normal((1 << bits, o))
    return x, codes, levels, np.ones(o, np.float32)


ACT = [np.array([20.0], np.float32), np.array([128], np.int32)]  # activation inv_scale, zero point


def _lut(shape, bits, target):
    cfg = LutConv2dConfig(*shape, wbits=bits, abits=8)
    x, codes, levels, scale = _inputs(shape, bits)
    out = np.zeros((cfg.batch, cfg.out_channels, *cfg.out_hw), np.float32)
    args = [x, *ACT, lut.pack_index(codes, cfg), lut.code_counts(codes, cfg), levels, scale, out]
    return _lib_call(lut.schedule(lut.build_primfunc(cfg), target), args, target), args[3].nbytes


def _dequant(shape, bits, target):
    cfg = DequantConv2dConfig(*shape, abits=8, terms=1 << bits)
    x, codes, levels, scale = _inputs(shape, bits)
    terms = np.stack([(codes == j) for j in range(1 << bits)]).astype(np.int8)
    terms = terms.reshape(cfg.terms, cfg.out_channels, cfg.in_channels, *cfg.kernel)
    out = np.zeros((cfg.batch, cfg.out_channels, *cfg.out_hw), np.float32)
    func = dequant.schedule(dequant.build_primfunc(cfg), target)
    return _lib_call(func, [x, *ACT, terms, levels, scale, out], target)


def _time(fn, min_seconds: float = 0.05) -> float:
    fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls


def copy_bandwidth(mib: int = 256, rounds: int = 5) -> float:
    """Bytes per second of a large numpy copy (read + write counted)."""
    src = np.ones(mib << 20, np.uint8)
    dst = np.empty_like(src)
    best = min(_time(lambda: np.copyto(dst, src), 0.2) for _ in range(rounds))
    return 2 * src.nbytes / best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--no-dequant", action="store_true")
    parser.add_argument("--layers", default="all")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    target = load_target("x86").tvm_target
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 2**30:.1f} GiB/s (numpy copy, read+write)")
    for name, shape in LAYERS:
        if args.layers != "all" and args.layers not in name:
            continue
        fns = {"torch fp32": _torch(shape)}
        fns["lut"], index_bytes = _lut(shape, args.bits, target)
        if not args.no_dequant:
            fns["dequant"] = _dequant(shape, args.bits, target)
        times = {k: [] for k in fns}
        for _ in range(args.rounds):
            for k, fn in fns.items():
                times[k].append(_time(fn))
        med = {k: float(np.median(v)) for k, v in times.items()}
        row = "  ".join(f"{k} {v * 1e3:.3f} ms" for k, v in med.items())
        ratios = "  ".join(f"torch/{k} {med['torch fp32'] / v:.2f}x" for k, v in med.items() if k != "torch fp32")
        print(f"{name} W{args.bits}A8: {row}  |  {ratios}")
        if shape[0] == 1 and shape[2] == 1:
            floor = index_bytes / bandwidth
            print(f"  index bytes {index_bytes / 2**20:.1f} MiB -> memory floor {floor * 1e3:.3f} ms "
                  f"(2-bit codes {shape[1] * shape[4] * args.bits / 8 / 2**20:.1f} MiB: "
                  f"{shape[1] * shape[4] * args.bits / 8 / bandwidth * 1e3:.3f} ms); lut at {floor / med['lut']:.0%} of its floor")


if __name__ == "__main__":
    main()
