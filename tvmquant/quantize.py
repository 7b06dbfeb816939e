"""Decide each layer's bit widths and run a method over the model: folded graph + calibration data in,
QuantScheme out."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from torch import fx

from .calibrate import record_layer_inputs
from .errors import UserError
from .frontend import LayerInfo
from .methods import uniform
from .scheme import LayerScheme, QuantScheme

METHODS = ("uniform",)


@dataclass(frozen=True)
class QuantConfig:
    """What the user asked for. `first_last_bits` None keeps the first and last layers in float32."""

    wbits: int = 2
    abits: int = 2
    first_last_bits: int | None = 8
    method: str = "uniform"

    def __post_init__(self) -> None:
        checks = (("--wbits/--bits", self.wbits), ("--abits/--bits", self.abits), ("--first-last-bits", self.first_last_bits))
        for flag, value in checks:
            if value is not None and not (isinstance(value, int) and 1 <= value <= 8):
                raise UserError(f"{flag} must be an integer from 1 to 8, got {value}")
        if self.method not in METHODS:
            raise UserError(f"unknown method '{self.method}'; known: {', '.join(METHODS)}")


def quantize_model(
    gm: fx.GraphModule, layers: list[LayerInfo], calib: np.ndarray, config: QuantConfig, batch_size: int
) -> QuantScheme:
    """Quantize every supported layer; unsupported ones (and, if asked, first/last) stay float with a reason."""
    scheme = QuantScheme()
    supported = []
    for layer in layers:
        if layer.unsupported:
            warnings.warn(f"layer '{layer.name}' kept in float32: {layer.unsupported} is not supported", stacklevel=2)
            scheme.kept_float[layer.name] = layer.unsupported
        else:
            supported.append(layer)
    edges = {supported[0].name, supported[-1].name} if supported else set()
    chosen = []
    for layer in supported:
        wbits, abits = config.wbits, config.abits
        if layer.name in edges and config.first_last_bits != min(config.wbits, config.abits):
            if config.first_last_bits is None:
                scheme.kept_float[layer.name] = "first/last layer kept in float32 (--first-last-bits fp32)"
                continue
            wbits = abits = config.first_last_bits
        chosen.append((layer, wbits, abits))
    samples = record_layer_inputs(gm, [layer for layer, _, _ in chosen], calib, batch_size)
    for layer, wbits, abits in chosen:
        weight = gm.get_parameter(layer.weight).detach().numpy()
        scheme.layers[layer.name] = LayerScheme(
            name=layer.name,
            op=layer.op,
            weight=uniform.quantize_weight(weight, wbits),
            act=uniform.calibrate_activation(samples[layer.name], abits),
            stride=layer.stride,
            padding=layer.padding,
        )
    return scheme
