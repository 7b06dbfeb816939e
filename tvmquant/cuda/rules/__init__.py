"""CUDA schedule rules: one per tvmquant kernel family (families.RULES), then TVM dlight's GPU rules for
every other function (the fp32 ops)."""

from __future__ import annotations

from tvm import tirx
from tvm.tirx.op import register_intrin_lowering
from tvm.s_tir import dlight as dl

from .families import RULES


def _fma(op: tirx.Call) -> tirx.PrimExpr:
    """multipoint rounds each product alone through fma(w, v, +0); CUDA's fma() is the same IEEE operation."""
    return tirx.call_pure_extern(str(op.ty.dtype), "fma", *op.args)


register_intrin_lowering("tirx.fma", target="cuda", f=_fma, level=10)


def generic_rules() -> list[dl.ScheduleRule]:
    """dlight's GPU rules in TVM's own order; Fallback takes whatever the others do not."""
    return [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


__all__ = ["RULES", "generic_rules"]
