"""Decide each layer's bit widths and run a method over the model: folded graph + calibration data in,
QuantScheme out."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx

from . import actquant
from .act_scale import ACT_SCALES, calibrate_activation_pow2
from .calibrate import record_input_grams, record_layer_inputs
from .errors import UserError
from .frontend import LayerInfo
from .methods import uniform
from .methods.registry import QAT_METHODS, PtqJob, method_named
from .scheme import ActQuant, LayerScheme, QuantScheme, WeightQuant
from .train import TrainConfig, train_quantized


@dataclass(frozen=True)
class QuantConfig:
    """What the user asked for. `first_last_bits` None keeps the first and last layers in float32."""

    wbits: int = 2
    abits: int = 2
    first_last_bits: int | None = 8
    method: str = "uniform"
    budget: float = 0.1  # multipoint: extra rows as a fraction of all quantized output channels (--budget)
    act_scale: str = "mse"  # "pow2": power-of-two activation scales, signed codes (act_scale.py; VTA needs it)
    options: tuple[tuple[str, object], ...] = ()  # further method options (--method-opt KEY=VALUE)

    def __post_init__(self) -> None:
        checks = (("--wbits/--bits", self.wbits), ("--abits/--bits", self.abits), ("--first-last-bits", self.first_last_bits))
        for flag, value in checks:
            if value is not None and not (isinstance(value, int) and 1 <= value <= 8):
                raise UserError(f"{flag} must be an integer from 1 to 8, got {value}")
        method = method_named(self.method)
        if self.act_scale not in ACT_SCALES:
            raise UserError(f"--act-scale must be one of {', '.join(ACT_SCALES)}, got '{self.act_scale}'")
        if self.budget < 0:
            raise UserError(f"--budget must be >= 0 (extra rows as a fraction of channels), got {self.budget}")
        if min(self.wbits, self.first_last_bits or 8) < method.min_bits:
            raise UserError(f"method '{self.method}' needs at least {method.min_bits} weight bits")
        if "budget" in dict(self.options):
            raise UserError("give the multipoint budget as --budget")
        method.check(dict(self.options))  # every option checked now, before any work

    def method_options(self, training: bool = False) -> dict[str, object]:
        """The options of the method's quantizer (`training`: of its trainer): --budget where it has one, then
        --method-opt, parsed."""
        method = method_named(self.method)
        given = dict(self.options)
        if not training and any(o.name == "budget" for o in method.options):
            given["budget"] = self.budget
        return method.resolve(given, training)


def plan_layers(layers: list[LayerInfo], config: QuantConfig, scheme: QuantScheme) -> list[tuple[LayerInfo, int, int]]:
    """(layer, wbits, abits) of every layer to quantize; the others go to `scheme.kept_float` with a reason."""
    supported = []
    for layer in layers:
        if layer.unsupported:
            warnings.warn(f"layer '{layer.name}' kept in float32: {layer.unsupported} is not supported", stacklevel=3)
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
    return chosen


def calibrate_activations(
    gm: fx.GraphModule, chosen: list[tuple[LayerInfo, int, int]], calib: np.ndarray, batch_size: int,
    act_scale: str = "mse",
) -> dict[str, ActQuant]:
    """Uniform activation quantizers with fixed, calibrated statistics (every method shares them)."""
    samples = record_layer_inputs(gm, [layer for layer, _, _ in chosen], calib, batch_size)
    fit = calibrate_activation_pow2 if act_scale == "pow2" else uniform.calibrate_activation
    return {layer.name: fit(samples[layer.name], abits) for layer, _, abits in chosen}


def quantize_weights(
    gm: fx.GraphModule, chosen: list[tuple[LayerInfo, int, int]], acts: dict[str, ActQuant],
    calib: np.ndarray, config: QuantConfig, batch_size: int, options: dict | None = None,
) -> dict[str, WeightQuant]:
    """Post-training weight quantization by the configured method (no training); `options` are the method's
    keyword arguments (listed in each method module's docstring)."""
    weights = {layer.name: gm.get_parameter(layer.weight).detach().numpy() for layer, _, _ in chosen}
    bits = {layer.name: wbits for layer, wbits, _ in chosen}

    def grams() -> dict[str, np.ndarray]:
        kernels = {name: tuple(w.shape[2:]) for name, w in weights.items()}
        quant = {name: (lambda x, a=act: actquant.torch_dequantized(x, a)) for name, act in acts.items()}
        return record_input_grams(gm, [layer for layer, _, _ in chosen], kernels, quant, calib, batch_size)

    return method_named(config.method).ptq(PtqJob(weights, bits, grams), {**config.method_options(), **(options or {})})


def assemble(
    chosen: list[tuple[LayerInfo, int, int]], weights: dict[str, WeightQuant], acts: dict[str, ActQuant],
    scheme: QuantScheme,
) -> QuantScheme:
    """Put per-layer weights and activations into the scheme."""
    for layer, _, _ in chosen:
        scheme.layers[layer.name] = LayerScheme(
            name=layer.name, op=layer.op, weight=weights[layer.name], act=acts[layer.name],
            stride=layer.stride, padding=layer.padding,
        )
    return scheme


def quantize_model(
    gm: fx.GraphModule, layers: list[LayerInfo], calib: np.ndarray, config: QuantConfig, batch_size: int,
    options: dict | None = None,
) -> QuantScheme:
    """Quantize every supported layer post-training; unsupported ones (and, if asked, first/last) stay float.
    `options`: the method's keyword arguments."""
    scheme = QuantScheme()
    chosen = plan_layers(layers, config, scheme)
    acts = calibrate_activations(gm, chosen, calib, batch_size, config.act_scale)
    return assemble(chosen, quantize_weights(gm, chosen, acts, calib, config, batch_size, options), acts, scheme)


def with_weights(gm: fx.GraphModule, layers: list[LayerInfo], weights: dict[str, WeightQuant]) -> fx.GraphModule:
    """A copy of `gm` whose quantized layers hold their dequantized weights (the network as it will run)."""
    gm = copy.deepcopy(gm)
    with torch.no_grad():
        for layer in layers:
            if layer.name in weights:
                param = gm.get_parameter(layer.weight)
                param.copy_(torch.from_numpy(weights[layer.name].dequantize()).to(param.dtype))
    return gm


def quantize_with_training(
    gm: fx.GraphModule, layers: list[LayerInfo], calib: np.ndarray, config: QuantConfig, batch_size: int,
    train: TrainConfig, data: tuple[np.ndarray, np.ndarray], options: dict | None = None,
) -> tuple[QuantScheme, fx.GraphModule]:
    """QAT: activations calibrated on the float model, weights fine-tuned by the method (`options`: further
    trainer keyword arguments beside the config's, qat.py), then activations re-calibrated on the trained graph
    with its quantized weights in place (training moved the biases and the activation ranges); returns the
    scheme and the trained graph (its biases changed too)."""
    method = method_named(config.method)
    if not method.trains:
        raise UserError(f"method '{config.method}' is post-training only; --train works with {', '.join(QAT_METHODS)}")
    options = {**config.method_options(training=True), **(options or {})}
    scheme = QuantScheme()
    chosen = plan_layers(layers, config, scheme)
    acts = calibrate_activations(gm, chosen, calib, batch_size, config.act_scale)
    bits = {layer.name: wbits for layer, wbits, _ in chosen}
    trained, weights = train_quantized(gm, layers, bits, acts, config.method, data, batch_size, train, options)
    acts = calibrate_activations(with_weights(trained, layers, weights), chosen, calib, batch_size, config.act_scale)
    return assemble(chosen, weights, acts, scheme), trained
