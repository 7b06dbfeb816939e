"""The CUDA Relax build: TVM's CUDA legalization, then tvmquant's family rules and dlight for the rest.

TVM's own CUDA pipeline ends its legalization with dlight, which knows nothing of our kernels; here the
kernels arrive unscheduled and opaque (one fused function each) and the family rules (rules.RULES) schedule
them first, so dlight's Matmul / GEMV / Reduction / Fallback only see the fp32 ops. Functions already
scheduled (by a tuning record) are left alone.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.backend.cuda import pipeline as cuda_pipeline
from tvm.s_tir import dlight as dl
from tvm.target import Target

from . import mixed_precision
from .rules import RULES, generic_rules


def legalize_passes(target: Target) -> list[tvm.transform.Pass]:
    """TVM's CUDA library dispatch and legalization without its closing dlight pass; with --float16, first
    the float32 ops outside our kernels to float16 (mixed_precision)."""
    return [
        *mixed_precision.passes(target),
        *cuda_pipeline.library_dispatch_passes(target),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def finalize_passes(target: Target) -> list[tvm.transform.Pass]:
    return cuda_pipeline.dataflow_lower_passes(target) + cuda_pipeline.finalize_passes(target)


def legalize(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """Relax ops -> fused TIR PrimFuncs, unscheduled (what `tune` extracts and records are matched against)."""
    with target:
        return tvm.transform.Sequential(legalize_passes(target))(mod)


def schedule(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """Every unscheduled PrimFunc: its family's CUDA rule, else the first dlight GPU rule that applies."""
    with target:
        return dl.ApplyDefaultSchedule(*RULES, *generic_rules())(mod)


def finalize(mod: tvm.IRModule, target: Target) -> relax.VMExecutable:
    return tvm.compile(mod, target, relax_pipeline=tvm.transform.Sequential(finalize_passes(target)))
