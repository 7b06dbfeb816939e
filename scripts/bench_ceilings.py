"""Physical ceilings for the benchmark, measured on this machine with the benchmark's thread count:

- popcount throughput: a TVM micro-kernel doing what the bit-serial inner loop does at its cheapest (a 64-bit
  logic op, VPOPCNTQ, a 64-bit add) on 16 u64 lanes of L1-resident data, one accumulator row per thread;
- memory bandwidth: a numpy copy split over the threads, once from DRAM (arrays far larger than the L3) and
  once within the L3, counted as bytes read + bytes written.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import tvm
from tvm import te, tirx
from tvm.s_tir import Schedule

LANES, ROWS, REPS = 16, 64, 4096


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


def measure(target: tvm.target.Target, threads: int, l3_bytes: int) -> dict[str, float]:
    """The three rates the report's ceilings are computed from."""
    return {
        "popcount_words_per_s": popcount_words_per_second(target, threads),
        "dram_bytes_per_s": copy_bandwidth(1 << 29, threads),
        "l3_bytes_per_s": copy_bandwidth(max(l3_bytes // 4, 1 << 20), threads),
        "l3_bytes": l3_bytes,
    }
