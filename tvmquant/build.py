"""Relax module + QuantScheme -> executable: lower quantized layers, embed the remaining weights, compile."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .frontend import LayerInfo
from .passes.lower_quantized import LowerQuantizedLayers
from .scheme import QuantScheme
from .target import TargetSpec


def build(
    mod: tvm.IRModule,
    params: dict[str, np.ndarray],
    param_fqn: dict[str, str],
    layers: list[LayerInfo],
    scheme: QuantScheme,
    target: TargetSpec,
) -> tuple[relax.VMExecutable, dict[str, str]]:
    """Compile for `target`; returns the executable and the kernel family chosen per quantized layer."""
    layer_of_weight = {info.weight: info.name for info in layers if info.name in scheme.layers}
    param_to_layer = {p: layer_of_weight[fqn] for p, fqn in param_fqn.items() if fqn in layer_of_weight}
    lower = LowerQuantizedLayers(scheme, param_to_layer)
    mod = lower(mod)
    mod = relax.transform.BindParams("main", {k: tvm.runtime.tensor(v) for k, v in params.items()})(mod)
    mod = relax.transform.DeadCodeElimination()(mod)
    return tvm.compile(mod, target.tvm_target), dict(lower.kernels)
