"""The shift family's two forms on one POW2 conv, side by side with int8 (the same exact integers): the
exponent-bucket kernel (kernels/shift_gather.py, what one-exponent convs get on CPUs), the channel-lane kernel
(what dense layers and wider spans get; every conv got it before) and the int8 family, each form built for
every bit width whatever shift.compute would pick. All three outputs are checked identical first; then
interleaved rounds (one timing of each per round), medians.

    PYTHONPATH=. python scripts/bench_shift_forms.py [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import tvm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_shift import _layer, _time  # noqa: E402

from tvmquant.kernels import int8, shift, shift_gather  # noqa: E402
from tvmquant.kernels.family import kernel_call, layer_geometry, scheduled  # noqa: E402
from tvmquant.scheme import WeightKind, integer_core  # noqa: E402
from tvmquant.target import load_target  # noqa: E402

SHAPE, OUT, KERNEL, PADDING = (1, 64, 56, 56), 64, (3, 3), (1, 1)
BITS = [(2, 2), (3, 4), (4, 4)]


def _form(module, config, layer, geometry):
    """One form's scheduled kernel and constants, whatever shift.compute would pick for this layer."""
    core = integer_core(layer)
    matrix = core.matrices[0]
    max_shift = int(np.abs(matrix).max(initial=1)).bit_length() - 1
    extra = {"length": shift_gather.list_length(matrix)} if module is shift_gather else {}
    cfg = config(**vars(geometry), abits=layer.act.bits, max_shift=max_shift, **extra)
    call = kernel_call(module.build_primfunc(cfg), layer, [module.encode_weights(matrix, cfg), core.scale])
    return call.prim.with_attr("global_symbol", "main"), call.consts


def _runner(prim, consts, x, geometry, target):
    lib = tvm.compile(tvm.IRModule({"main": prim}), target)
    out = np.zeros((SHAPE[0], geometry.out_channels, *geometry.out_hw), np.float32)
    args = [tvm.runtime.tensor(a) for a in (x, *consts, out)]
    return (lambda: lib(*args)), args[-1]


def _torch_int8(x: np.ndarray):
    """PyTorch's fbgemm int8 conv of the same shape (static, calibrated on x): the peer of the issue's goal."""
    import torch
    import torch.ao.quantization as tq

    torch.backends.quantized.engine = "fbgemm"
    model = torch.nn.Sequential(tq.QuantStub(), torch.nn.Conv2d(SHAPE[1], OUT, KERNEL, padding=PADDING),
                                tq.DeQuantStub()).eval()
    model.qconfig = tq.get_default_qconfig("fbgemm")
    tq.prepare(model, inplace=True)
    tensor = torch.from_numpy(x)
    model(tensor)
    tq.convert(model, inplace=True)

    def run():
        with torch.no_grad():
            model(tensor)
    return run


def _cpu_time(fn, min_seconds: float = 0.05) -> float:
    """CPU seconds per call, repeated until min_seconds of CPU time have passed (after one warm-up call)."""
    fn()
    calls, start = 0, time.process_time()
    while time.process_time() - start < min_seconds:
        fn()
        calls += 1
    return (time.process_time() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu-time", action="store_true",
                        help="time by this process's CPU time, not wall time (with --threads 1 on a loaded machine: "
                             "time slices lost to other jobs are not counted)")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    target = load_target("x86").tvm_target
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    clock = "CPU" if args.cpu_time else "wall"
    print(f"conv 3x3 64->64 @56x56, POW2; {args.threads} threads, {args.rounds} interleaved rounds, median {clock} ms")
    torch_int8 = _torch_int8(x)
    print("\n| bits | buckets | channel lanes | int8 | PyTorch int8 | lanes / buckets | int8 / buckets "
          "| PyTorch int8 / buckets |")
    print("|---|---|---|---|---|---|---|---|")
    for wb, ab in BITS:
        layer = _layer(SHAPE, OUT, KERNEL, PADDING, WeightKind.POW2, wb, ab)
        geometry = layer_geometry(layer, SHAPE)
        variants = {}
        for name, module, config in (("buckets", shift_gather, shift_gather.GatherConv2dConfig),
                                     ("lanes", shift, shift.ShiftConv2dConfig)):
            prim, consts = _form(module, config, layer, geometry)
            variants[name] = _runner(module.schedule(prim, target), consts, x, geometry, target)
        call = scheduled(int8.FAMILY, layer, geometry, target)
        variants["int8"] = _runner(call.prim, call.consts, x, geometry, target)
        variants["torch"] = (torch_int8, None)
        outputs = {}
        for name, (fn, out) in variants.items():
            fn()
            if out is not None:
                outputs[name] = out.numpy()
        np.testing.assert_array_equal(outputs["buckets"], outputs["lanes"])
        np.testing.assert_array_equal(outputs["buckets"], outputs["int8"])
        times = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, (fn, _) in variants.items():
                times[name].append(_cpu_time(fn) if args.cpu_time else _time(fn))
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        b = med["buckets"]
        print(f"| W{wb}A{ab} | {b:.3f} | {med['lanes']:.3f} | {med['int8']:.3f} | {med['torch']:.3f} "
              f"| {med['lanes'] / b:.2f}x | {med['int8'] / b:.2f}x | {med['torch'] / b:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
