"""Record what each quantizable layer sees on calibration data, by running the folded FX graph."""

from __future__ import annotations

import numpy as np
import torch
from torch import fx

from .frontend import LayerInfo

MAX_SAMPLES = 200_000  # values kept per layer for range search; enough for a stable MSE optimum


class _InputRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, nodes: dict[str, str]):
        super().__init__(gm)
        self.nodes = nodes
        self.seen: dict[str, list[torch.Tensor]] = {name: [] for name in nodes.values()}

    def run_node(self, n: fx.Node):
        if n.name in self.nodes:
            self.seen[self.nodes[n.name]].append(self.env[n.args[0]].detach().flatten())
        return super().run_node(n)


def record_layer_inputs(
    gm: fx.GraphModule, layers: list[LayerInfo], data: np.ndarray, batch_size: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """A subsample (at most MAX_SAMPLES values) of every layer's input activations, keyed by layer name."""
    recorder = _InputRecorder(gm, {layer.node: layer.name for layer in layers})
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            chunk = torch.from_numpy(data[start : start + batch_size])
            if len(chunk) < batch_size:  # the graph is exported for a fixed batch: pad the tail
                chunk = torch.cat([chunk, chunk[:1].expand(batch_size - len(chunk), *chunk.shape[1:])])
            recorder.run(chunk)
    rng = np.random.default_rng(seed)
    samples = {}
    for name, parts in recorder.seen.items():
        values = torch.cat(parts).numpy()
        if values.size > MAX_SAMPLES:
            values = rng.choice(values, MAX_SAMPLES, replace=False)
        samples[name] = values
    return samples
