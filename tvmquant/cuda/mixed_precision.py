"""--float16 on CUDA: the float32 ops that remain outside tvmquant's kernels (layers left in float32, bias
adds, activations, pooling) computed in float16, the model's inputs and outputs still float32.

TVM's ToMixedPrecision does the graph rewrite: convolutions and matrix products take float16 operands and
accumulate in float32 (ACCUMULATOR), their results are stored as float16, elementwise ops follow their inputs'
dtype, and casts are inserted where a float16 value meets an op that keeps float32. tvmquant's kernels are
`call_tir`s, which the pass cannot cast the arguments of (it fails on the callee), so every float32 kernel
input is first passed through an explicit `astype(float32)` the pass then rewrites, and the casts that end up
float32 -> float32 are dropped afterwards. The kernels keep float32 inputs and outputs and stay exact; a
layer's input is rounded to float16 only where a float16 op produced it, so a --float16 build differs from
the float32 reference by float16 rounding in the float32 parts only.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.target import Target

from .target import float16

ACCUMULATOR = "float32"
_CALL_TIR, _ASTYPE = tvm.ir.Op.get("relax.call_tir"), tvm.ir.Op.get("relax.astype")


def _is_float32(expr: relax.Expr) -> bool:
    ty = expr.ty
    return isinstance(ty, relax.TensorType) and str(ty.dtype) == "float32"


@mutator
class _GuardKernelInputs(PyExprMutator):
    """Every float32 tensor argument of a call_tir behind an explicit astype(float32)."""

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if call.op != _CALL_TIR:
            return call
        callee, args, *rest = call.args
        guarded = [relax.op.astype(a, "float32") if _is_float32(a) else a for a in args.fields]
        return relax.Call(call.op, [callee, relax.Tuple(guarded), *rest], call.attrs, call.ty_args)


@mutator
class _DropNoopCasts(PyExprMutator):
    """astype(x, d) where x already is d: x."""

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if call.op == _ASTYPE and str(call.args[0].ty.dtype) == str(call.attrs.dtype):
            return call.args[0]
        return call


def _function_pass(mutator_class: type, name: str) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name=name)
    def run(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        for gv, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                mod[gv] = mutator_class(mod).visit_expr(func)
        return mod

    return run


def passes(target: Target) -> list[tvm.transform.Pass]:
    """The rewrite for a --float16 target (none otherwise)."""
    if not float16(target):
        return []
    return [relax.transform.ConvertToDataflow(), _function_pass(_GuardKernelInputs, "GuardKernelInputs"),
            relax.transform.ToMixedPrecision(out_dtype=ACCUMULATOR), _function_pass(_DropNoopCasts, "DropNoopCasts"),
            relax.transform.DeadCodeElimination()]
