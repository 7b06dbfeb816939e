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

from ..kernels import bitserial, dequant
from ..scheme import LayerScheme, QuantScheme, integer_form

KERNEL_PREFIX = "bitserial_"  # PrimFuncs named so are ours: `tune` and `build` give them our default schedule
OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps never fuses such a call with its neighbours


@tvm.transform.module_pass(opt_level=0, name="LowerQuantizedLayers")
class LowerQuantizedLayers:
    """Module pass; records which kernel each layer got in `self.kernels` (layer name -> kernel family).

    `tunable=True` inserts the kernels unscheduled (for MetaSchedule), marked opaque so that fusion keeps each
    one a task of its own that `bitserial.schedule` can still handle when no tuning record matches it.
    """

    def __init__(self, scheme: QuantScheme, param_to_layer: dict[str, str], tunable: bool = False):
        self.scheme = scheme
        self.param_to_layer = param_to_layer
        self.tunable = tunable
        self.kernels: dict[str, str] = {}

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
            if layer is not None and call.attrs.groups == 1:
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
        form = integer_form(layer)
        if form is None:
            return self._dequant_kernel(x, layer, shape)
        kernel = tuple(layer.weight.codes.shape[2:]) if layer.op == "conv2d" else (1, 1)
        cfg = bitserial.BitserialConv2dConfig(
            *shape, layer.weight.out_channels, kernel, layer.stride, layer.padding, layer.weight.bits, layer.act.bits
        )
        prim = bitserial.build_primfunc(cfg, layer.act.inv_scale, layer.act.zero_point, scheduled=not self.owner.tunable)
        if self.owner.tunable:
            prim = prim.with_attr("op_pattern", OPAQUE)
        gv = self.builder_.add_func(prim.without_attr("global_symbol"), f"{KERNEL_PREFIX}{_ident(layer.name)}")
        consts = [
            bitserial.pack_weights(form.codes, cfg),
            form.code_sums,
            form.zw2,
            form.scale,
        ]
        self.owner.kernels[layer.name] = "bitserial"
        out_ty = relax.TensorType((shape[0], cfg.out_channels, *cfg.out_hw), "float32")
        return relax.call_tir(gv, [x, *(relax.const(np.ascontiguousarray(v)) for v in consts)], out_ty)

    def _dequant_kernel(self, x: relax.Expr, layer: LayerScheme, shape: tuple[int, int, int, int]) -> relax.Expr:
        """Kinds with no integer kernel yet (POW2, CODEBOOK, MULTIPOINT): dequantize-then-dense."""
        weight = layer.weight.dequantize()
        kernel = tuple(weight.shape[2:]) if layer.op == "conv2d" else (1, 1)
        cfg = dequant.DequantConv2dConfig(
            *shape, layer.weight.out_channels, kernel, layer.stride, layer.padding, layer.act.bits
        )
        prim = dequant.build_primfunc(cfg, layer.act.inv_scale, layer.act.zero_point, layer.act.scale)
        if self.owner.tunable:  # not a tuning task: keep it whole through fusion, with its default schedule
            prim = prim.with_attr("op_pattern", OPAQUE).with_attr("tirx.is_scheduled", True)
        gv = self.builder_.add_func(prim.without_attr("global_symbol"), f"dequant_{_ident(layer.name)}")
        self.owner.kernels[layer.name] = "dequant"
        const = relax.const(np.ascontiguousarray(weight.reshape(cfg.out_channels, shape[1], *kernel)), "float64")
        out_ty = relax.TensorType((shape[0], cfg.out_channels, *cfg.out_hw), "float32")
        return relax.call_tir(gv, [x, const], out_ty)


def _ident(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)
