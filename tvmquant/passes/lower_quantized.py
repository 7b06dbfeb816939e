"""LowerQuantizedLayers: replace quantized conv2d / linear calls with call_tir of tvmquant kernels.

Preconditions: the module comes from `frontend.to_relax`, so weights are still function parameters, named as
in the ExportedProgram; `param_to_layer` maps those names to layers of the QuantScheme. Linear layers appear as
`matmul(x, permute_dims(W, [1, 0]))`; conv2d as `nn.conv2d(x, W)` in NCHW/OIHW. Bias adds are left in place.
Every other op is untouched and lowered by TVM as usual.
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax

from ..kernels import registry
from ..kernels.family import layer_geometry
from ..scheme import LayerScheme, QuantScheme

OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps never fuses such a call with its neighbours


@tvm.transform.module_pass(opt_level=0, name="LowerQuantizedLayers")
class LowerQuantizedLayers:
    """Module pass; records per layer name the kernel family it got (`kernels`), the bytes of its constants
    (`const_bytes`) and why the preferred or requested family was not taken (`notes`).

    `kernel` is "auto" (the scheme kind decides) or a family name to use wherever it applies. Kernels are
    PrimFuncs named `<family>_<layer>`. `tunable=True` inserts tunable families' kernels unscheduled (for
    MetaSchedule), marked opaque so that fusion keeps each one a task of its own that the family's
    `schedule` can still handle when no tuning record matches it. `deferred=True` (CUDA) inserts every
    family's kernel unscheduled and opaque: the target's own rules schedule them after fusion.
    """

    def __init__(
        self, scheme: QuantScheme, param_to_layer: dict[str, str], tunable: bool = False, kernel: str = "auto",
        deferred: bool = False,
    ):
        self.scheme = scheme
        self.param_to_layer = param_to_layer
        self.tunable = tunable
        self.kernel = kernel
        self.deferred = deferred
        self.kernels: dict[str, str] = {}
        self.const_bytes: dict[str, int] = {}
        self.notes: dict[str, str] = {}

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        rewriter = _Rewriter(mod, self)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return rewriter.builder_.get()


def _static_shape(expr: relax.Expr) -> list[int]:
    return [int(d) for d in expr.ty.shape]


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, owner: LowerQuantizedLayers):
        super().__init__(mod)
        self.owner = owner

    def _layer_of(self, weight: relax.Expr) -> LayerScheme | None:
        if not isinstance(weight, relax.Var):
            return None
        name = self.owner.param_to_layer.get(weight.name)
        return self.owner.scheme.layers.get(name) if name else None

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        op = getattr(call.op, "name", None)
        if op == "relax.nn.conv2d":
            layer = self._layer_of(call.args[1])
            if layer is not None and call.attrs.groups == layer.groups:
                return self._conv2d(call.args[0], layer)
        elif op == "relax.matmul" and isinstance(call.args[1], relax.Var):
            transposed = self.lookup_binding(call.args[1])
            if isinstance(transposed, relax.Call) and getattr(transposed.op, "name", None) == "relax.permute_dims":
                layer = self._layer_of(transposed.args[0])
                if layer is not None:
                    return self._linear(call.args[0], layer)
        return call

    def _conv2d(self, x: relax.Expr, layer: LayerScheme) -> relax.Expr:
        n, c, h, w = _static_shape(x)
        return self._kernel(x, layer, (n, c, h, w))

    def _linear(self, x: relax.Expr, layer: LayerScheme) -> relax.Expr:
        shape = _static_shape(x)
        rows = math.prod(shape[:-1])
        flat = self.builder_.emit(relax.op.reshape(x, (rows, shape[-1], 1, 1)))
        out = self.builder_.emit(self._kernel(flat, layer, (rows, shape[-1], 1, 1)))
        return relax.op.reshape(out, (*shape[:-1], layer.weight.out_channels))

    def _kernel(self, x: relax.Expr, layer: LayerScheme, shape: tuple[int, int, int, int]) -> relax.Expr:
        family, note = registry.choose(layer, self.owner.kernel)
        tuned = self.owner.tunable and family.TUNABLE
        geometry = layer_geometry(layer, shape)
        call = family.instantiate(layer, geometry, scheduled=not (tuned or self.owner.deferred))
        prim = call.prim
        if self.owner.tunable or self.owner.deferred:  # opaque: fusion keeps each kernel whole
            prim = prim.with_attr("op_pattern", OPAQUE)
            if not (tuned or self.owner.deferred):
                prim = prim.with_attr("tirx.is_scheduled", True)
        gv = self.builder_.add_func(prim.without_attr("global_symbol"), f"{family.FAMILY}_{_ident(layer.name)}")
        self.owner.kernels[layer.name] = family.FAMILY
        self.owner.const_bytes[layer.name] = call.const_bytes
        if note:
            self.owner.notes[layer.name] = note
        out_ty = relax.TensorType((shape[0], geometry.out_channels, *geometry.out_hw), "float32")
        return relax.call_tir(gv, [x, *(relax.const(np.ascontiguousarray(v), str(v.dtype)) for v in call.consts)], out_ty)


def _ident(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)
