"""The CUDA Relax passes (the CUDA adapter's, adapters/cuda.py): TVM's CUDA legalization without its closing
dlight pass, and the rest of TVM's CUDA pipeline.

TVM's own CUDA pipeline ends its legalization with dlight, which knows nothing of our kernels; here the
kernels stay unscheduled and opaque (one fused function each) until pipeline.default_schedules gives them
their family rules (cuda/rules/), so dlight's Matmul / GEMV / Reduction / Fallback only see the fp32 ops.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.backend.cuda import pipeline as cuda_pipeline
from tvm.target import Target

from . import mixed_precision


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
