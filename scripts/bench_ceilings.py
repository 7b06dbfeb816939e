"""Physical ceilings for the benchmark, measured on this machine with the benchmark's thread count:

- popcount throughput: a TVM micro-kernel doing what the bit-serial inner loop does at its cheapest (a 64-bit
  logic op, VPOPCNTQ, a 64-bit add) on 16 u64 lanes of L1-resident data, one accumulator row per thread;
- 8-bit dot throughput (x86 with AVX-512 VNNI): the int8 family's own `vpdpbusd` tensor intrinsic on
  L1-resident operands, ACCUMULATORS independent accumulator vectors per thread (enough to hide its latency);
- memory bandwidth: a numpy copy split over the threads, once from DRAM (arrays far larger than the L3) and
  once within the L3, counted as bytes read + bytes written.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import tvm
from tvm import te, tirx
from tvm.s_tir import Schedule

from tvmquant.kernels import int8
from tvmquant.kernels.family import FAMILY_ATTR, LAYER_ATTR, layer_geometry
from tvmquant.scheme import QuantScheme

LANES, ROWS, REPS = 16, 64, 4096
ACCUMULATORS = 8


def _popcount_kernel(parts: int) -> tirx.PrimFunc:
    a = te.placeholder((ROWS, LANES), "uint64", name="a")
    r, i = te.reduce_axis((0, REPS), name="r"), te.reduce_axis((0, ROWS), name="i")
    out = te.compute(
        (parts, LANES),
        lambda p, lane: te.sum(tirx.popcount(a[i, lane] ^ (r + p).astype("uint64")), axis=[r, i]),
        name="acc",
    )
    sch = Schedule(te.create_prim_func([a, out]))
    block = sch.get_sblock("acc")
    p, lane, r, i = sch.get_loops(block)
    sch.reorder(p, r, i, lane)
    sch.parallel(p)
    sch.vectorize(lane)
    sch.unroll(i)
    sch.decompose_reduction(block, r)
    return sch.mod["main"]


def popcount_words_per_second(target: tvm.target.Target, threads: int, repeats: int = 7) -> float:
    """Best-of-`repeats` rate of 64-bit popcounts (with their logic op and add), all threads together."""
    lib = tvm.compile(tvm.IRModule({"main": _popcount_kernel(threads)}), target)
    dev = tvm.cpu()
    a = tvm.runtime.tensor(np.random.default_rng(0).integers(0, 2**63, (ROWS, LANES), dtype=np.uint64), dev)
    out = tvm.runtime.tensor(np.zeros((threads, LANES), np.uint64), dev)
    lib(a, out)
    seconds = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        lib(a, out)
        seconds = min(seconds, time.perf_counter() - start)
    return threads * LANES * ROWS * REPS / seconds


def _dot_kernel(parts: int) -> tirx.PrimFunc:
    """acc[p, t, 16] += 4 u8 x (16 x 4) s8 products per step, REPS x ROWS steps, t = independent accumulators."""
    a = te.placeholder((ROWS, int8.GROUP), "uint8", name="a")
    w = te.placeholder((ROWS, int8.LANES, int8.GROUP), "int8", name="w")
    r, i = te.reduce_axis((0, REPS // 8), name="r"), te.reduce_axis((0, ROWS), name="i")
    k = te.reduce_axis((0, int8.GROUP), name="k")
    out = te.compute(
        (parts, ACCUMULATORS, int8.LANES),
        lambda p, t, lane: te.sum(a[i, k].astype("int32") * w[i, lane, k].astype("int32"), axis=[r, i, k]),
        name="acc",
    )
    sch = Schedule(te.create_prim_func([a, w, out]))
    block = sch.get_sblock("acc")
    p, t, lane, r, i, k = sch.get_loops(block)
    sch.reorder(p, r, i, t, lane, k)
    sch.parallel(p)
    sch.unroll(t)
    sch.reverse_compute_at(sch.cache_write(block, 0, "local"), p)
    sch.decompose_reduction(block, r)
    sch.tensorize(lane, int8.INTRINS["vnni"][0])
    return sch.mod["main"]


def vnni_dots_per_second(target: tvm.target.Target, threads: int, repeats: int = 7) -> float | None:
    """Best-of-`repeats` rate of `vpdpbusd` (16 x 4 byte products each), all threads together; None where the
    target has no VNNI."""
    if int8.dot_isa(target) != "vnni":
        return None
    lib = tvm.compile(tvm.IRModule({"main": _dot_kernel(threads)}), target)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    a = tvm.runtime.tensor(rng.integers(0, 256, (ROWS, int8.GROUP), dtype=np.uint8), dev)
    w = tvm.runtime.tensor(rng.integers(-128, 128, (ROWS, int8.LANES, int8.GROUP), dtype=np.int8), dev)
    out = tvm.runtime.tensor(np.zeros((threads, ACCUMULATORS, int8.LANES), np.int32), dev)
    lib(a, w, out)
    seconds = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        lib(a, w, out)
        seconds = min(seconds, time.perf_counter() - start)
    return threads * ACCUMULATORS * ROWS * (REPS // 8) / seconds


def copy_bandwidth(nbytes: int, threads: int, repeats: int = 5) -> float:
    """Bytes per second (read + write) of np.copyto over `threads` equal slices, best of `repeats`."""
    src = np.ones(nbytes // 8, np.float64)
    dst = np.empty_like(src)
    slices = np.array_split(np.arange(len(src)), threads)
    bounds = [(s[0], s[-1] + 1) for s in slices]

    def work(lo: int, hi: int, loops: int) -> None:
        for _ in range(loops):
            np.copyto(dst[lo:hi], src[lo:hi])

    loops = max(1, int(2**28 // nbytes))  # repeat small copies so each timing spans a few hundred MB
    best = float("inf")
    for _ in range(repeats):
        workers = [threading.Thread(target=work, args=(lo, hi, loops)) for lo, hi in bounds]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, (time.perf_counter() - start) / loops)
    return 2 * nbytes / best


def kernel_work(mod: tvm.IRModule, scheme: QuantScheme) -> dict:
    """What a compiled model's kernels must do at the least, from its lowered module: 64-bit popcounts of the
    bit-serial layers (N·OH·OW·KH·KW·⌈C/64⌉·A·(O·W + 1)) and `vpdpbusd` steps of the int8 layers
    (N·OH·OW·KH·KW·⌈C/4⌉·⌈O/16⌉); layers of other families are listed, not counted."""
    work = {"popcount_words": 0, "vnni_dots": 0, "uncounted": []}
    for _, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or func.attrs is None or LAYER_ATTR not in func.attrs:
            continue
        layer = scheme.layers[str(func.attrs[LAYER_ATTR])]
        g = layer_geometry(layer, tuple(int(d) for d in func.params[0].shape))
        taps = g.batch * math.prod(g.out_hw) * math.prod(g.kernel)
        family = str(func.attrs[FAMILY_ATTR])
        if family == "bitserial":
            work["popcount_words"] += taps * -(-g.in_channels // 64) * layer.act.bits * (
                g.out_channels * layer.weight.bits + 1)
        elif family == "int8":
            work["vnni_dots"] += taps * -(-g.in_channels // int8.GROUP) * -(-g.out_channels // int8.LANES)
        else:
            work["uncounted"].append(layer.name)
    return work


def measure(target: tvm.target.Target, threads: int, l3_bytes: int) -> dict[str, float]:
    """The three rates the report's ceilings are computed from."""
    return {
        "popcount_words_per_s": popcount_words_per_second(target, threads),
        "vnni_dots_per_s": vnni_dots_per_second(target, threads),
        "vnni_accumulators": ACCUMULATORS,
        "dram_bytes_per_s": copy_bandwidth(1 << 29, threads),
        "l3_bytes_per_s": copy_bandwidth(max(l3_bytes // 4, 1 << 20), threads),
        "l3_bytes": l3_bytes,
    }
