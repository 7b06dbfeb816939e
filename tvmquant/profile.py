"""Where a compiled model's milliseconds go: wall time per kernel and per remaining op, from the Relax VM's
instrument hook (called before and after every Call instruction), summed over runs and sorted by time.

Timing happens in this process, so it needs the module loaded here (local targets); over RPC the hook would
have to be a function on the device. `run --profile`, `bench` and `compile --report` all time through here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .rpc import DeviceModule

# VM builtins that only move tensors around (allocation, shape checks, tuple handling): not ops of the model
_BOOKKEEPING = ("vm.builtin.", "relax.vm.", "vm.")


@dataclass
class ProfileRow:
    name: str  # the PrimFunc (our kernels: `<family>_<layer>`) or packed function called
    calls: int  # per run
    ms: float  # per run, summed over its calls
    share: float  # of the profiled total


def profile(module: DeviceModule, x: np.ndarray, runs: int = 10) -> list[ProfileRow]:
    """Per-call wall times of `runs` runs of `module` on input `x` (one batch), slowest first; the first run
    (warm-up) is not counted."""
    import tvm

    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    started: list[float] = []

    def instrument(_func, name: str, before_run: bool, _ret, *_args) -> int:
        if before_run:
            started.append(time.perf_counter())
        else:
            elapsed = time.perf_counter() - started.pop()
            totals[name] = totals.get(name, 0.0) + elapsed
            counts[name] = counts.get(name, 0) + 1
        return 0  # VMInstrumentReturnKind.kNoOp: run the call

    module(x)  # warm-up: first-touch page faults, thread pool start
    module.vm.set_instrument(tvm.runtime.convert(instrument))
    try:
        for _ in range(runs):
            module(x)
    finally:
        module.vm.set_instrument(tvm.runtime.convert(lambda *_args: 0))
    ops = {k: v for k, v in totals.items() if not k.startswith(_BOOKKEEPING)}
    whole = sum(ops.values()) or 1.0
    rows = [ProfileRow(k, counts[k] // runs, 1e3 * v / runs, v / whole) for k, v in ops.items()]
    return sorted(rows, key=lambda r: -r.ms)


def print_profile(rows: list[ProfileRow], runs: int) -> None:
    total = sum(r.ms for r in rows)
    print(f"profile (VM instrument hook, mean of {runs} runs): {total:.3f} ms in {len(rows)} functions")
    width = max((len(r.name) for r in rows), default=8)
    print(f"  {'function':<{width}}  calls        ms   share")
    for r in rows:
        print(f"  {r.name:<{width}}  {r.calls:>5}  {r.ms:>8.3f}  {100 * r.share:5.1f} %")


def profile_functions(artifact: Path, x: np.ndarray, repeat: int = 10) -> dict[str, float]:
    """{function: ms per run} of an artifact loaded here, for one input batch `x`."""
    from .rpc import DeviceModule

    return {row.name: row.ms for row in profile(DeviceModule.local(artifact), x, repeat)}


def layer_times(functions: dict[str, float], kernels: dict[str, str]) -> dict[str, float]:
    """{layer: ms} for the layers whose kernel appears in `functions` (layer -> kernel family in `kernels`)."""
    from .passes.lower_quantized import _ident  # how the pass names a layer's kernel

    out = {}
    for layer, family in kernels.items():
        name = f"{family}_{_ident(layer)}"
        if name in functions:
            out[layer] = functions[name]
    return out
