"""Quantize a model by a per-layer plan: each layer with its own method and bit widths, each kernel family and
deployed size as the Relax pass will pick and store them.

Every layer is quantized exactly as `quantize.quantize_model` would quantize it under a uniform config with
that layer's method and bits (activations calibrated on the float network, weights post-training), so a plan
whose layers all say the same thing gives the same scheme as the plain command line.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import fx

from .errors import UserError
from .frontend import LayerInfo
from .kernels import registry
from .kernels.family import layer_geometry
from .plan import FLOAT, LayerChoice, Plan
from .quantize import QuantConfig, assemble, calibrate_activations, quantize_weights
from .scheme import ActQuant, LayerScheme, QuantScheme, WeightQuant
from .target import TargetSpec


def supported_layers(layers: list[LayerInfo]) -> list[LayerInfo]:
    """The layers a plan decides (the others stay float32 whatever it says)."""
    return [layer for layer in layers if not layer.unsupported]


def layer_config(choice: LayerChoice, base: QuantConfig) -> QuantConfig:
    """The uniform config that quantizes one layer as `choice` says (multipoint budget, act scales from `base`)."""
    return QuantConfig(wbits=choice.wbits, abits=choice.abits, first_last_bits=choice.wbits, method=choice.method,
                       budget=base.budget, act_scale=base.act_scale)


def input_shapes(gm: fx.GraphModule, layers: list[LayerInfo], batch: np.ndarray) -> dict[str, tuple[int, ...]]:
    """Each layer's input shape on one batch (the kernel geometry the pass will see)."""
    nodes = {layer.node: layer.name for layer in layers}
    shapes: dict[str, tuple[int, ...]] = {}

    class _Shapes(fx.Interpreter):
        def run_node(self, n: fx.Node):
            if n.name in nodes:
                shapes[nodes[n.name]] = tuple(self.env[n.args[0]].shape)
            return super().run_node(n)

    with torch.no_grad():
        _Shapes(gm).run(torch.from_numpy(batch))
    return shapes


def kernel_shape(layer: LayerScheme, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The NCHW shape the pass hands the kernel (linear layers: (rows, K, 1, 1))."""
    if layer.op == "linear":
        return (math.prod(shape[:-1]), shape[-1], 1, 1)
    return tuple(shape)  # type: ignore[return-value]


def deployed(layer: LayerScheme, shape: tuple[int, ...], target: TargetSpec, kernel: str = "auto") -> tuple[str, int]:
    """(family, bytes of its weight constants): what LowerQuantizedLayers will choose and store for this layer
    when building for `target` (the int8 cost rule depends on the target's dot-product instruction, the
    choice on the target's rule table)."""
    from .pipeline import rules

    family, _ = registry.choose(layer, target.tvm_target, kernel, rules(target))
    call = family.compute(layer, layer_geometry(layer, kernel_shape(layer, shape)), target.tvm_target)
    return family.name, call.const_bytes


def quantize_choice(
    gm: fx.GraphModule, info: LayerInfo, choice: LayerChoice, act: ActQuant, calib: np.ndarray,
    base: QuantConfig, batch_size: int,
) -> WeightQuant:
    """One layer's weights by its chosen method (post-training)."""
    config = layer_config(choice, base)
    try:
        return quantize_weights(gm, [(info, choice.wbits, choice.abits)], {info.name: act}, calib, config,
                                batch_size)[info.name]
    except UserError as exc:
        raise UserError(f"layer '{info.name}' ({choice.label()}): {exc}") from None


def quantize_planned(
    gm: fx.GraphModule, layers: list[LayerInfo], calib: np.ndarray, plan: Plan, base: QuantConfig,
    batch_size: int,
) -> QuantScheme:
    """The QuantScheme of `plan`; float32 layers and unsupported ones go to `kept_float`."""
    scheme = QuantScheme()
    for layer in layers:
        if layer.unsupported:
            scheme.kept_float[layer.name] = layer.unsupported
        elif plan.layers[layer.name].is_float:
            scheme.kept_float[layer.name] = "kept in float32 by the plan"
    chosen = [(info, plan.layers[info.name].wbits, plan.layers[info.name].abits)
              for info in supported_layers(layers) if not plan.layers[info.name].is_float]
    acts = calibrate_activations(gm, chosen, calib, batch_size, base.act_scale)
    weights = {info.name: quantize_choice(gm, info, plan.layers[info.name], acts[info.name], calib, base, batch_size)
               for info, _, _ in chosen}
    return assemble(chosen, weights, acts, scheme)


def fill_predictions(
    plan: Plan, scheme: QuantScheme, gm: fx.GraphModule, layers: list[LayerInfo], calib: np.ndarray,
    batch_size: int, target: TargetSpec, kernel: str = "auto",
) -> Plan:
    """The plan with each layer's family and deployed bytes as this scheme gives them; a family written in the
    plan that the kernel rule would not pick is an error (the family follows from method and bits)."""
    shapes = input_shapes(gm, supported_layers(layers), calib[:batch_size])
    out = {}
    for info in supported_layers(layers):
        choice = plan.layers[info.name]
        if choice.is_float:
            out[info.name] = LayerChoice(FLOAT, bytes=4 * gm.get_parameter(info.weight).numel(),
                                         error=choice.error, flips=choice.flips)
            continue
        family, size = deployed(scheme.layers[info.name], shapes[info.name], target, kernel)
        if choice.family is not None and choice.family != family:
            raise UserError(f"plan: layer '{info.name}' says family '{choice.family}', but {choice.label()} runs on "
                            f"'{family}' (the family follows from method and bits: drop the field or change them)")
        out[info.name] = LayerChoice(choice.method, choice.wbits, choice.abits, family, size, choice.error, choice.flips)
    return Plan(plan.model, out, plan.budget_bytes, plan.fp32_bytes, plan.notes)
