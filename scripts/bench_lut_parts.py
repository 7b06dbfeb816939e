"""Where a LUT kernel's time goes: the whole kernel vs its integer part (padded codes, tables, the lookups and
the bucket sums) alone, interleaved in one process, medians. The rest is the float64 combination of the
buckets with the codebook levels (products, their sum and the rescale).

    python scripts/bench_lut_parts.py [--rounds 9] [--bits 2] [--abits 2]     (TVM_NUM_THREADS sets threads)
"""

from __future__ import annotations

import argparse

import numpy as np
import tvm
from tvm import te
from tvm.s_tir import Schedule

from tvmquant import actquant
from tvmquant.kernels import lut
from tvmquant.target import load_target

LAYERS = {  # (a GEMV's combination is 4 x 4096 products: nothing to split off)
    "conv 3x3 64->64 @56x56": (1, 64, 56, 56, 64, (3, 3), (1, 1), (1, 1)),
    "conv 3x3 512->512 @7x7": (1, 512, 7, 7, 512, (3, 3), (1, 1), (1, 1)),
}


def integer_part(cfg: lut.LutConv2dConfig, isa: str) -> tvm.tirx.PrimFunc:
    """The kernel up to the buckets and the centred window sums, scheduled as in the whole kernel."""
    x = te.placeholder((cfg.batch, cfg.in_channels, cfg.height, cfg.width), "float32", name="x")
    inv, zp = actquant.te_placeholders()
    index = te.placeholder((cfg.padded_out // lut.LANES, *cfg.kernel, cfg.pairs, cfg.lookups, lut.LANES, lut.TABLES),
                           "uint8", name="index")
    counts = te.placeholder((cfg.lookups, cfg.out_channels), cfg.acc_dtype, name="counts")
    buckets, total = lut.lut_conv2d_buckets(x, inv, zp, index, counts, cfg)
    sch = Schedule(te.create_prim_func([x, inv, zp, index, counts, buckets, total]))
    step = lut.schedule_lookup(sch, isa)
    return sch.mod["main"] if step is None else lut._emit_step(sch.mod["main"], step, isa)


def timer(func: tvm.tirx.PrimFunc, target: tvm.target.Target):
    module = tvm.compile(tvm.IRModule({"main": func}), target).jit()
    rng = np.random.default_rng(0)
    given = {"act_inv_scale": np.array([1.0], "float32"), "act_zero_point": np.array([1], "int32")}
    args = []
    for b in func.params:
        shape = [int(d) for d in b.shape]
        value = given.get(b.name, rng.standard_normal(shape).astype("float32") if b.name == "x" else np.zeros(shape, b.dtype))
        args.append(tvm.runtime.tensor(value))
    f = module.time_evaluator("main", tvm.cpu(), number=10, repeat=1)
    return lambda: f(*args).mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--abits", type=int, default=2)
    args = parser.parse_args()
    target = load_target("x86").tvm_target
    isa = lut.lookup_isa(target)
    for name, shape in LAYERS.items():
        cfg = lut.LutConv2dConfig(*shape, wbits=args.bits, abits=args.abits)
        fns = {"whole": timer(lut.schedule(lut.build_primfunc(cfg), target), target),
               "integer part": timer(integer_part(cfg, isa), target)}
        times = {k: [] for k in fns}
        for i in range(args.rounds):
            for k in list(fns)[i % 2:] + list(fns)[:i % 2]:
                times[k].append(fns[k]())
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        print(f"{name} W{args.bits}A{args.abits} ({isa}): whole {med['whole']:.3f} ms, integer part "
              f"{med['integer part']:.3f} ms ({med['integer part'] / med['whole']:.0%}), float64 combination "
              f"{1 - med['integer part'] / med['whole']:.0%}")


if __name__ == "__main__":
    main()
