"""LowerQuantizedLayers: replace quantized conv2d / linear calls with call_tir of tvmquant kernels.

Preconditions: the module comes from `frontend.to_relax`, so weights are still function parameters, named as
in the ExportedProgram; `param_to_layer` maps those names to layers of the QuantScheme. Linear layers appear as
`matmul(x, permute_dims(W, [1, 0]))`; conv2d as `nn.conv2d(x, W)` in NCHW/OIHW. Bias adds are left in place.
Every other op is untouched and lowered by TVM as usual.

The pass is stateless: what it decided travels in the module. Each kernel PrimFunc carries the attributes
`tvmquant.family` and `tvmquant.layer`; the module attribute `tvmquant.notes` maps a layer to why its preferred
or requested family was not taken. `Lowered.from_module` reads them back (build, tune and the reports use it).
Kernels are inserted unscheduled and opaque (fusion keeps each one whole: a tuning task of its own, or the
input of its family's schedule rule in `ApplyDefaultSchedule`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

from ..kernels import registry
from ..kernels.family import FAMILY_ATTR, LAYER_ATTR, layer_geometry
from ..scheme import LayerScheme, QuantScheme
from . import family_choice
from .layer_match import layer_weight, rewrite_functions

OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps never fuses such a call with its neighbours
NOTES_ATTR = "tvmquant.notes"
CHOICES_ATTR = "tvmquant.choices"
ACT_INPUTS = 2  # kernel parameters after x that carry the activation quantizer (kernels/family.py)


@dataclass(frozen=True)
class Lowered:
    """What the lowering decided per quantized layer, as read back from the module."""

    kernels: dict[str, str]  # layer -> kernel family
    const_bytes: dict[str, int]  # layer -> bytes of the kernel's weight constants (what the artifact stores)
    notes: dict[str, str]  # layer -> why the preferred or requested family was not taken
    choices: dict[str, str] = field(default_factory=dict)  # layer -> why `auto` took its family (rule / measured)

    @classmethod
    def from_module(cls, mod: tvm.IRModule) -> Lowered:
        kernels, const_bytes = {}, {}
        for _, func in mod.functions_items():
            if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None and LAYER_ATTR in func.attrs:
                layer = str(func.attrs[LAYER_ATTR])
                kernels[layer] = str(func.attrs[FAMILY_ATTR])
                const_bytes[layer] = _weight_bytes(func)
        notes = mod.attrs.get(NOTES_ATTR) if mod.attrs is not None else None
        choices = mod.attrs.get(CHOICES_ATTR) if mod.attrs is not None else None
        return cls(kernels, const_bytes, {str(k): str(v) for k, v in (notes or {}).items()},
                   {str(k): str(v) for k, v in (choices or {}).items()})


def _weight_bytes(func: tvm.tirx.PrimFunc) -> int:
    """Bytes of the weight parameters (x, act inputs, weights..., out): fixed by the kernel's signature."""
    total = 0
    for param in list(func.params)[1 + ACT_INPUTS : -1]:
        total += math.prod(int(d) for d in param.shape) * tvm.runtime.DataType(param.dtype).itemsize
    return total


@tvm.transform.module_pass(opt_level=0, name="LowerQuantizedLayers")
class LowerQuantizedLayers:
    """Swap quantized layers for kernel calls. `kernel` is "auto" (the scheme kind decides) or a family name to
    use wherever it applies on `target`; `rules` is the target's rule table (family.rule_table: which families
    have a schedule there; default: the families' own rules); `measured`: kernel times from `tune`
    (family_times), by which `auto` picks among a layer's exact families (passes/family_choice). Kernels are
    PrimFuncs named `<family>_<layer>` (for people: nothing decodes the name)."""

    def __init__(
        self, scheme: QuantScheme, param_to_layer: dict[str, str], target: Target, kernel: str = "auto",
        rules: Mapping[str, ScheduleRule] | None = None, measured: Mapping[str, float] | None = None,
    ):
        self.measured = measured or {}  # kernel workload key -> ms, from `tune` (family_times)
        self.scheme = scheme
        self.param_to_layer = param_to_layer
        self.target = target
        self.kernel = kernel
        self.rules = rules

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        rewriter = _Rewriter(mod, self)
        out = rewrite_functions(mod, rewriter)
        out = out.with_attr(NOTES_ATTR, rewriter.notes) if rewriter.notes else out
        return out.with_attr(CHOICES_ATTR, rewriter.choices) if rewriter.choices else out


def _static_shape(expr: relax.Expr) -> list[int]:
    return [int(d) for d in expr.ty.shape]


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, owner: LowerQuantizedLayers):
        super().__init__(mod)
        self.owner = owner
        self.notes: dict[str, str] = {}
        self.choices: dict[str, str] = {}

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        found = layer_weight(call, self.lookup_binding)
        name = self.owner.param_to_layer.get(found[1].name) if found else None
        layer = self.owner.scheme.layers.get(name) if name else None
        if layer is None:
            return call
        return self._conv2d(call.args[0], layer) if found[0] == "conv2d" else self._linear(call.args[0], layer)

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
        family, note = registry.choose(layer, self.owner.target, self.owner.kernel, self.owner.rules)
        geometry = layer_geometry(layer, shape)
        call = family.compute(layer, geometry, self.owner.target)
        if self.owner.kernel == "auto" and note is None:
            family, call, why = family_choice.pick(layer, geometry, self.owner.target, self.owner.rules, family, call,
                                                   self.owner.measured)
            if why:
                self.choices[layer.name] = why
        prim = call.prim.with_attr(LAYER_ATTR, layer.name).with_attr("op_pattern", OPAQUE)
        gv = self.builder_.add_func(prim.without_attr("global_symbol"), f"{family.name}_{_ident(layer.name)}")
        if note:
            self.notes[layer.name] = note
        out_ty = relax.TensorType((shape[0], geometry.out_channels, *geometry.out_hw), "float32")
        return relax.call_tir(gv, [x, *(relax.const(np.ascontiguousarray(v), str(v.dtype)) for v in call.consts)], out_ty)


def _ident(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)
