"""Per-layer time of a compiled module on this machine: the Relax VM calls an instrument around every call
(`vm.set_instrument`, TVM 0.27 has no profiler), which times each PrimFunc; kernels are named FAMILY_LAYER
by the lowering pass, so a time maps back to its layer."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def profile_functions(artifact: Path, x: np.ndarray, repeat: int = 10) -> dict[str, float]:
    """Median wall milliseconds per call of each compiled function (VM builtins left out), over `repeat`
    runs after one warm-up, for one input batch `x`."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(artifact)), tvm.cpu())
    data = tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32))
    started: dict[str, float] = {}
    run: dict[str, float] = defaultdict(float)

    def instrument(func, name, before_run, ret, *args) -> int:
        if name.startswith("vm.builtin."):
            return 0
        now = time.perf_counter()
        if before_run:
            started[name] = now
        else:
            run[name] += now - started.pop(name)
        return 0  # run the call as usual

    vm.set_instrument(instrument)
    vm["main"](data)  # warm-up
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(repeat):
        run.clear()
        vm["main"](data)
        for name, seconds in run.items():
            samples[name].append(1e3 * seconds)
    return {name: float(np.median(values)) for name, values in samples.items()}


def layer_times(functions: dict[str, float], kernels: dict[str, str]) -> dict[str, float]:
    """{layer: ms} for the layers whose kernel appears in `functions` (layer -> kernel family in `kernels`)."""
    from .passes.lower_quantized import _ident  # how the pass names a layer's kernel

    out = {}
    for layer, family in kernels.items():
        name = f"{family}_{_ident(layer)}"
        if name in functions:
            out[layer] = functions[name]
    return out
