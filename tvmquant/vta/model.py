"""A whole model on VTA: which layers the core runs, their calibrated VtaLayers, and the model evaluated with
VTA layers either by their exact arithmetic (the reference) or by their programs on the simulator.

Layers VTA cannot run exactly (see arith.unsupported) keep the usual quantized reference (and on the host, the
usual tvmquant kernel); layers kept in float stay float. A VTA layer whose only user is a ReLU clips at 0 on
the core; the host's ReLU after it is then an exact no-op.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import fx

from ..frontend import LayerInfo
from ..reference import ReferenceModel
from ..scheme import QuantScheme
from . import arith
from .arith import VtaLayer
from .config import VtaConfig

PLAN_SAMPLES = 32  # calibration inputs that set each layer's shifts


def _relu_follows(node: fx.Node) -> bool:
    users = list(node.users)
    return len(users) == 1 and users[0].op == "call_function" and "relu" in str(users[0].target)


class VtaReference(ReferenceModel):
    """The quantized reference with VTA layers computed by `run_layer` (default: their exact arithmetic).

    With `vta_layers` empty and a `config`, a first call on calibration data plans every runnable layer from
    the inputs it actually sees (earlier layers already in their VTA form) and records it in `vta_layers`.
    """

    def __init__(self, gm: fx.GraphModule, layers: list[LayerInfo], scheme: QuantScheme,
                 vta_layers: dict[str, VtaLayer], config: VtaConfig | None = None,
                 run_layer: Callable[[np.ndarray, VtaLayer], np.ndarray] = arith.reference):
        super().__init__(gm, layers, scheme)
        self.vta_layers, self.config, self.run_layer = vta_layers, config, run_layer
        self.host_reasons: dict[str, str] = {}

    def run_node(self, n: fx.Node):
        layer = self.by_node.get(n.name)
        if layer is None:
            return super().run_node(n)
        if layer.name not in self.vta_layers and self.config is not None and layer.name not in self.host_reasons:
            reason = arith.unsupported(layer, self.config)
            if reason:
                self.host_reasons[layer.name] = reason
            else:
                args, _ = self.fetch_args_kwargs_from_env(n)
                bias = args[2].numpy() if len(args) > 2 and args[2] is not None else None
                self.vta_layers[layer.name] = arith.plan_layer(layer, bias, _relu_follows(n), self.config, args[0].numpy())
        vl = self.vta_layers.get(layer.name)
        if vl is None:
            return super().run_node(n)
        args, _ = self.fetch_args_kwargs_from_env(n)
        return torch.from_numpy(np.ascontiguousarray(self.run_layer(args[0].numpy(), vl)))


def plan_model(gm: fx.GraphModule, layers: list[LayerInfo], scheme: QuantScheme, config: VtaConfig,
               calib: np.ndarray) -> tuple[dict[str, VtaLayer], dict[str, str]]:
    """(VTA layers by name, {host layer: why not VTA}) from one pass over calibration samples (one batch of
    them: the exported graph's batch-size guard is dropped from a copy, the ops themselves take any batch)."""
    gm = copy.deepcopy(gm)
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target.startswith("_guards"):
            gm.graph.erase_node(node)
    gm.recompile()
    planner = VtaReference(gm, layers, scheme, {}, config)
    planner(calib[:PLAN_SAMPLES])
    return planner.vta_layers, planner.host_reasons
