"""OffloadToVta: a Relax rewrite that hands VTA layers to the accelerator through packed functions.

Each VTA layer's conv2d (or matmul with a transposed weight) becomes
`R.call_dps_packed("tvmquant.vta.<layer>", [x])`, whose implementation (runtime.py, registered when the
artifact is loaded) runs the layer's program; the bias add that followed it is dropped, because the program
adds the bias itself. Everything else stays for the host pipeline (the remaining quantized layers get
tvmquant's usual kernels, the rest TVM's).
"""

from __future__ import annotations

import tvm
from tvm import relax

from ..passes.layer_match import layer_weight, rewrite_functions

PREFIX = "tvmquant.vta."


def packed_name(layer: str) -> str:
    return PREFIX + layer


def offloaded_layers(mod: tvm.IRModule) -> set[str]:
    """The layers OffloadToVta handed to VTA in `mod` (read from its packed calls: the pass keeps no state)."""
    found: set[str] = set()

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.ExternFunc) and str(expr.global_symbol).startswith(PREFIX):
            found.add(str(expr.global_symbol)[len(PREFIX):])

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found


@tvm.transform.module_pass(opt_level=0, name="OffloadToVta")
class OffloadToVta:
    """`weight_param`: relax parameter name of each VTA layer's weight; `bias_param`: of its bias, if any."""

    def __init__(self, weight_param: dict[str, str], bias_param: dict[str, str]):
        self.layer_of_weight = {p: layer for layer, p in weight_param.items()}
        self.bias_param = bias_param

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_functions(mod, _Rewriter(mod, self))


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, owner: OffloadToVta):
        super().__init__(mod)
        self.owner = owner

    def _offloaded_layer(self, expr: relax.Expr) -> str | None:
        bound = self.lookup_binding(expr) if isinstance(expr, relax.Var) else None
        if isinstance(bound, relax.Call) and isinstance(bound.args[0], relax.ExternFunc):
            name = str(bound.args[0].global_symbol)
            return name[len(PREFIX):] if name.startswith(PREFIX) else None
        return None

    def _is_param(self, expr: relax.Expr, name: str | None) -> bool:
        if name is None or not isinstance(expr, relax.Var):
            return False
        if expr.name == name:
            return True
        bound = self.lookup_binding(expr)
        return (isinstance(bound, relax.Call) and getattr(bound.op, "name", None) == "relax.reshape"
                and self._is_param(bound.args[0], name))

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        found = layer_weight(call, self.lookup_binding)
        layer = self.owner.layer_of_weight.get(found[1].name) if found else None
        if layer is not None:
            return relax.call_dps_packed(packed_name(layer), relax.Tuple([call.args[0]]), call.ty)
        if getattr(call.op, "name", None) == "relax.add":
            for a, b in ((call.args[0], call.args[1]), (call.args[1], call.args[0])):
                layer = self._offloaded_layer(a)
                if layer is not None and self._is_param(b, self.owner.bias_param.get(layer)):
                    return a
        return call
