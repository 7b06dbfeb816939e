"""The PyTorch evaluation of a quantized model: the reference every compiled module is checked against.

It runs the BatchNorm-folded FX graph and replaces each quantized conv2d/linear by the exact computation the
kernels perform: activations quantized with the same float32 multiply and round-half-even, the integer core in
float64 (exact for these magnitudes), then one float32 rescale per output channel. Bias stays a float32 add, as
in the compiled graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx

from . import actquant
from .frontend import LayerInfo
from .scheme import LayerScheme, QuantScheme, integer_core


def quantize_input(x: torch.Tensor, layer: LayerScheme) -> torch.Tensor:
    """Activation codes as float32, computed exactly as the kernel does (actquant's one definition)."""
    return actquant.torch_codes(x, layer.act)


@dataclass
class CoreOperands:
    """A layer's IntegerCore as torch tensors: the nonzero integer matrices (float64, exact) with their
    combination weights, and the float32 output scale."""

    terms: list[tuple[torch.Tensor, torch.Tensor]]  # (T_j (O, K) float64, combine_j (O,) float64)
    scale: torch.Tensor


def core_operands(layer: LayerScheme) -> CoreOperands:
    core = integer_core(layer)
    terms = [
        (torch.from_numpy(core.term(j).astype(np.float64)), torch.from_numpy(core.combine[j]))
        for j in core.nonzero_terms()
    ]
    return CoreOperands(terms, torch.from_numpy(core.scale))


def quantized_layer(
    x: torch.Tensor, layer: LayerScheme, bias: torch.Tensor | None, operands: CoreOperands | None = None
) -> torch.Tensor:
    """One quantized layer's float32 output (before bias is added as its own op); `operands` from
    core_operands(layer), precomputed by callers that run many batches."""
    centred = (quantize_input(x, layer) - layer.act.zero_point).double()
    operands = operands if operands is not None else core_operands(layer)
    core = 0.0
    for matrix, combine in operands.terms:
        if layer.op == "linear":
            part = (centred @ matrix.T) * combine
        else:
            kh, kw = layer.weight.codes.shape[-2:]
            weight = matrix.reshape(len(matrix), -1, kh, kw)
            part = F.conv2d(centred, weight, stride=layer.stride, padding=layer.padding) * combine.reshape(-1, 1, 1)
        core = core + part
    out = core.float() * (operands.scale if layer.op == "linear" else operands.scale.reshape(1, -1, 1, 1))
    if bias is not None:
        out = out + (bias.reshape(1, -1, 1, 1) if layer.op == "conv2d" else bias)
    return out


class ReferenceModel(fx.Interpreter):
    """Runs the folded graph with quantized layers swapped for their exact reference."""

    def __init__(self, gm: fx.GraphModule, layers: list[LayerInfo], scheme: QuantScheme):
        super().__init__(gm)
        self.by_node = {info.node: scheme.layers[info.name] for info in layers if info.name in scheme.layers}
        self.operands = {node: core_operands(layer) for node, layer in self.by_node.items()}

    def run_node(self, n: fx.Node):
        layer = self.by_node.get(n.name)
        if layer is None:
            return super().run_node(n)
        args, _ = self.fetch_args_kwargs_from_env(n)
        return quantized_layer(args[0], layer, args[2] if len(args) > 2 else None, self.operands[n.name])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.run(torch.from_numpy(x)).numpy()
