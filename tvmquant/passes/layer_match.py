"""Where a conv2d / linear layer sits in a Relax module imported by `frontend.to_relax`: shared by the passes
that replace layers (LowerQuantizedLayers, the VTA adapter's OffloadToVta), so both match the same calls.

Linear layers appear as `matmul(x, permute_dims(W, [1, 0]))`; conv2d as `nn.conv2d(x, W)` (NCHW/OIHW), W a
function parameter named as in the ExportedProgram.
"""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import relax


def layer_weight(call: relax.Call, lookup: Callable[[relax.Var], relax.Expr | None]) -> tuple[str, relax.Var] | None:
    """("conv2d" | "linear", the weight parameter) of a layer call, or None; `lookup`: the mutator's
    lookup_binding. Grouped convolutions are not layers here (their kernels are not these)."""
    op = getattr(call.op, "name", None)
    if op == "relax.nn.conv2d" and isinstance(call.args[1], relax.Var) and call.attrs.groups == 1:
        return "conv2d", call.args[1]
    if op == "relax.matmul" and isinstance(call.args[1], relax.Var):
        transposed = lookup(call.args[1])
        if (isinstance(transposed, relax.Call) and getattr(transposed.op, "name", None) == "relax.permute_dims"
                and isinstance(transposed.args[0], relax.Var)):
            return "linear", transposed.args[0]
    return None


def rewrite_functions(mod: tvm.IRModule, rewriter: relax.PyExprMutator) -> tvm.IRModule:
    """Every Relax function of `mod` through `rewriter` (a PyExprMutator built on `mod`)."""
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get()
