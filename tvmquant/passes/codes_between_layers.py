"""CodesBetweenLayers: activations reach a quantized layer as the codes its kernel reads, not as float32.

Runs after LowerQuantizedLayers. Each kernel call `call_tir(kernel, [x, act_inv_scale, act_zero_point,
*weights])` whose family has an encoder with a schedule for the target (kernels/encoder.py: bitserial's
bit-planes, int8's padded NHWC u8/s8 codes) becomes

    codes = call_tir(encode_<family>_<layer>, [x, act_inv_scale, act_zero_point])
    out   = call_tir(<family>_<layer>, [codes, act_inv_scale, act_zero_point, *weights])

The encoder is not opaque, so FuseOps (in the adapter's legalize passes) fuses the producer's elementwise
chain (bias add, ReLU/ReLU6, a residual add, a linear layer's reshape) into it: the floats are read once and
written as codes (bit-planes at 2 bits are 1/16 of the float bytes), and the kernel's tile reads codes only.
Where another op still reads the float (a residual branch), FuseOps keeps that chain apart and the encoder
runs on its output. Families without an encoder (or without one for the target: CUDA) keep float inputs.

Stateless, like LowerQuantizedLayers: the kernels' `tvmquant.layer` / `tvmquant.family` attributes say which
layer and family a call is; the kernel is rebuilt from the scheme (same weights, same arithmetic: the encoder
is the kernel's own quantize/pad/pack TE), under the same name so profiles and records keep their keys.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.target import Target

from ..kernels.family import FAMILY_ATTR, LAYER_ATTR, layer_geometry
from ..kernels.registry import FAMILIES
from ..scheme import QuantScheme
from .layer_match import rewrite_functions
from .lower_quantized import ACT_INPUTS, OPAQUE, _static_shape

ENCODES_ATTR = "tvmquant.encodes"  # on an encoder PrimFunc: the layer whose input it encodes


@tvm.transform.module_pass(opt_level=0, name="CodesBetweenLayers")
class CodesBetweenLayers:
    """Split every kernel call whose family has an encoder for `target` into (encoder, kernel on codes)."""

    def __init__(self, scheme: QuantScheme, target: Target):
        self.scheme = scheme
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        split = {gv: func for gv, func in mod.functions_items() if self._splits(func)}
        # the kernels to replace leave the module first, so their replacements take their names
        rest = tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv not in split}, attrs=mod.attrs)
        return rewrite_functions(rest, _Rewriter(rest, split, self.scheme, self.target))

    def _splits(self, func: tvm.ir.BaseFunc) -> bool:
        """A layer's kernel whose family has an encoder with a schedule for the target."""
        attrs = func.attrs if isinstance(func, tvm.tirx.PrimFunc) else None
        if attrs is None or LAYER_ATTR not in attrs:
            return False
        family = FAMILIES.get(str(attrs[FAMILY_ATTR]))
        return family is not None and family.encoder_rule_for(self.target) is not None


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, split: dict[relax.GlobalVar, tvm.tirx.PrimFunc], scheme: QuantScheme,
                 target: Target):
        super().__init__(mod)
        self.split, self.scheme, self.target = split, scheme, target

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if getattr(call.op, "name", None) != "relax.call_tir" or call.args[0] not in self.split:
            return call
        gv = call.args[0]
        attrs = self.split[gv].attrs
        x, *consts = call.args[1].fields
        layer = self.scheme.layers[str(attrs[LAYER_ATTR])]
        family = FAMILIES[str(attrs[FAMILY_ATTR])]
        encoded = family.compute_encoded(layer, layer_geometry(layer, tuple(_static_shape(x))), self.target)
        # the layer attribute keeps equal encoders of different layers apart (BlockBuilder.add_func merges equal
        # functions), so a profile's encoder row is one layer's
        prim = encoded.encoder.with_attr(ENCODES_ATTR, layer.name).without_attr("global_symbol")
        encoder = self.builder_.add_func(prim, f"encode_{gv.name_hint}")
        codes_ty = relax.TensorType(encoded.codes_shape, encoded.io.dtype)
        codes = self.builder_.emit(relax.call_tir(encoder, [x, *consts[:ACT_INPUTS]], codes_ty))
        kernel = encoded.kernel.prim.with_attr(LAYER_ATTR, layer.name).with_attr("op_pattern", OPAQUE)
        new_gv = self.builder_.add_func(kernel.without_attr("global_symbol"), gv.name_hint)
        return relax.call_tir(new_gv, [codes, *consts], call.ty)

