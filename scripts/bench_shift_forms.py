"""The shift family's two forms on one POW2 conv, side by side with int8 (the same exact integers): the
exponent-bucket kernel (kernels/shift_gather.py, what convs get on CPUs), the channel-lane kernel (what dense
layers get; convs got it before) and the int8 family. All three outputs are checked identical first; then
interleaved rounds (one timing of each per round), medians.

    PYTHONPATH=. python scripts/bench_shift_forms.py [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import tvm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_shift import _layer, _time  # noqa: E402

from tvmquant.kernels import int8, shift  # noqa: E402
from tvmquant.kernels.family import kernel_call, layer_geometry, scheduled  # noqa: E402
from tvmquant.scheme import WeightKind, integer_core  # noqa: E402
from tvmquant.target import load_target  # noqa: E402

SHAPE, OUT, KERNEL, PADDING = (1, 64, 56, 56), 64, (3, 3), (1, 1)
BITS = [(2, 2), (3, 4), (4, 4)]


def _lane_form(layer, geometry):
    """The channel-lane kernel for a conv (shift.compute gives convs the bucket form on CPUs)."""
    core = integer_core(layer)
    matrix = core.matrices[0]
    max_shift = int(np.abs(matrix).max(initial=1)).bit_length() - 1
    cfg = shift.ShiftConv2dConfig(**vars(geometry), abits=layer.act.bits, max_shift=max_shift)
    call = kernel_call(shift.build_primfunc(cfg), layer, [shift.encode_weights(matrix, cfg), core.scale])
    return call.prim.with_attr("global_symbol", "main"), call.consts, shift.schedule


def _runner(prim, consts, x, geometry, target):
    lib = tvm.compile(tvm.IRModule({"main": prim}), target)
    out = np.zeros((SHAPE[0], geometry.out_channels, *geometry.out_hw), np.float32)
    args = [tvm.runtime.tensor(a) for a in (x, *consts, out)]
    return (lambda: lib(*args)), args[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    target = load_target("x86").tvm_target
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    print(f"conv 3x3 64->64 @56x56, POW2; {args.threads} threads, {args.rounds} interleaved rounds, median ms")
    print("\n| bits | buckets | channel lanes | int8 | lanes / buckets | int8 / buckets |")
    print("|---|---|---|---|---|---|")
    for wb, ab in BITS:
        layer = _layer(SHAPE, OUT, KERNEL, PADDING, WeightKind.POW2, wb, ab)
        geometry = layer_geometry(layer, SHAPE)
        prim, consts, schedule = _lane_form(layer, geometry)
        variants = {"lanes": _runner(schedule(prim, target), consts, x, geometry, target)}
        for name, family in (("buckets", shift), ("int8", int8)):
            call = scheduled(family.FAMILY, layer, geometry, target)
            variants[name] = _runner(call.prim, call.consts, x, geometry, target)
        outputs = {}
        for name, (fn, out) in variants.items():
            fn()
            outputs[name] = out.numpy()
        np.testing.assert_array_equal(outputs["buckets"], outputs["lanes"])
        np.testing.assert_array_equal(outputs["buckets"], outputs["int8"])
        times = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, (fn, _) in variants.items():
                times[name].append(_time(fn))
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        b = med["buckets"]
        print(f"| W{wb}A{ab} | {b:.3f} | {med['lanes']:.3f} | {med['int8']:.3f} | {med['lanes'] / b:.2f}x "
              f"| {med['int8'] / b:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
