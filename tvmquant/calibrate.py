"""Record what each quantizable layer sees on calibration data, by running the folded FX graph."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import fx

from .batching import fixed_batches
from .frontend import LayerInfo

MAX_SAMPLES = 200_000  # values kept per layer for range search; enough for a stable MSE optimum


class _InputRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, nodes: dict[str, str]):
        super().__init__(gm)
        self.nodes = nodes
        self.seen: dict[str, list[torch.Tensor]] = {name: [] for name in nodes.values()}
        self.valid = 0  # rows of the current batch that are real samples, not padding

    def run_node(self, n: fx.Node):
        if n.name in self.nodes:
            self.seen[self.nodes[n.name]].append(self.env[n.args[0]][: self.valid].detach().flatten())
        return super().run_node(n)


def record_layer_inputs(
    gm: fx.GraphModule, layers: list[LayerInfo], data: np.ndarray, batch_size: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """A subsample (at most MAX_SAMPLES values) of every layer's input activations, keyed by layer name."""
    recorder = _InputRecorder(gm, {layer.node: layer.name for layer in layers})
    with torch.no_grad():
        for chunk, recorder.valid in fixed_batches(data, batch_size):
            recorder.run(torch.from_numpy(chunk))
    rng = np.random.default_rng(seed)
    samples = {}
    for name, parts in recorder.seen.items():
        values = torch.cat(parts).numpy()
        if values.size > MAX_SAMPLES:
            values = rng.choice(values, MAX_SAMPLES, replace=False)
        samples[name] = values
    return samples


class _TensorRecorder(fx.Interpreter):
    """Keeps every recorded layer's whole input tensor for the current batch."""

    def __init__(self, gm: fx.GraphModule, nodes: dict[str, str]):
        super().__init__(gm)
        self.nodes = nodes
        self.current: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node):
        if n.name in self.nodes:
            self.current[self.nodes[n.name]] = self.env[n.args[0]]
        return super().run_node(n)


def record_input_grams(
    gm: fx.GraphModule, layers: list[LayerInfo], kernels: dict[str, tuple[int, int]],
    quantize: dict[str, Callable[[torch.Tensor], torch.Tensor]], data: np.ndarray, batch_size: int,
) -> dict[str, np.ndarray]:
    """G = XᵀX per layer over its input patches X (rows = output pixels, columns = (C, KH, KW) taps), with the
    input passed through `quantize[name]` first; the output error of a weight change d is then sqrt(dᵀ G d)."""
    recorder = _TensorRecorder(gm, {layer.node: layer.name for layer in layers})
    grams: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for chunk, valid in fixed_batches(data, batch_size):
            recorder.run(torch.from_numpy(chunk))
            for layer in layers:
                x = quantize[layer.name](recorder.current[layer.name][:valid]).double()
                if layer.op == "conv2d":
                    cols = torch.nn.functional.unfold(x, kernels[layer.name], padding=layer.padding, stride=layer.stride)
                    rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
                else:
                    rows = x.reshape(-1, x.shape[-1])
                gram = (rows.T @ rows).numpy()
                grams[layer.name] = grams.get(layer.name, 0) + gram
    return grams
