"""`tune`'s second job under `--kernel auto`: time every exact family a layer could run on (registry.candidates:
bit-serial and int8 for UNIFORM, shift-add and int8 for POW2), so compile can pick the fastest per layer.

Each candidate kernel is the family's own, as compile would build it (`pipeline.relax_module` with that family
requested); its time is the better of its default schedule, measured here with tune's builder and runner, and
its best MetaSchedule record (tunable families' kernels are tuning tasks too: `extra_kernels`). The times go
to the folder's family_times file, keyed by kernel workload.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import tvm

from . import family_times, pipeline
from .family_times import KernelTime, workload_key
from .kernels import registry
from .kernels.family import FAMILY_ATTR, LAYER_ATTR
from .pipeline import Quantized
from .source import ModelSource
from .target import TargetSpec

Kernel = tuple[str, str, tvm.tirx.PrimFunc]  # layer, family, unscheduled kernel
Measure = Callable[[list[tvm.IRModule]], list[float | None]]  # default-scheduled modules -> ms (None: failed)


def measured_families(quantized: Quantized, spec: TargetSpec) -> dict[str, list[str]]:
    """Layer -> the families to time, for layers with a choice."""
    target, table = spec.tvm_target, pipeline.rules(spec)
    wanted = {name: registry.candidates(layer, target, table) for name, layer in quantized.scheme.layers.items()}
    return {name: names for name, names in wanted.items() if len(names) > 1}


def candidate_kernels(source: ModelSource, quantized: Quantized, spec: TargetSpec) -> list[Kernel]:
    """Every (layer, family) kernel to time, built by the lowering with that family requested."""
    wanted = measured_families(quantized, spec)
    kernels = []
    for family in sorted({f for names in wanted.values() for f in names}):
        mod = pipeline.relax_module(source, quantized, spec, family)
        for _, func in mod.functions_items():
            if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None and LAYER_ATTR in func.attrs:
                layer = str(func.attrs[LAYER_ATTR])
                if str(func.attrs[FAMILY_ATTR]) == family and family in wanted.get(layer, []):
                    kernels.append((layer, family, func))
    return kernels


def extra_kernel_modules(source: ModelSource, quantized: Quantized, spec: TargetSpec) -> list[tvm.IRModule]:
    """The legalized modules whose tasks `tune` adds under auto: one per family some layer could also run on."""
    families = sorted({f for names in measured_families(quantized, spec).values() for f in names})
    return [pipeline.tuning_module(source, quantized, spec, family) for family in families]


def time_families(
    kernels: list[Kernel], spec: TargetSpec, log_dir: Path, tuned_ms: dict[tuple[str, str], float], measure: Measure,
) -> list[KernelTime]:
    """Time each kernel (default schedule, unless the folder has it already) and keep the better of that and its
    best tuning record (`tuned_ms`: (layer, family) -> ms); writes the folder's family_times file."""
    known = family_times.read(log_dir)
    keys = [workload_key(func) for _, _, func in kernels]
    todo = [i for i, key in enumerate(keys) if key not in known]
    mods = [pipeline.default_schedules(tvm.IRModule({"main": kernels[i][2].with_attr("global_symbol", "main")}), spec)
            for i in todo]
    default = dict(zip(todo, measure(mods)))
    times = []
    for i, ((layer, family, _), key) in enumerate(zip(kernels, keys)):
        options = [known[key].ms if key in known else default.get(i), tuned_ms.get((layer, family))]
        if any(ms is not None for ms in options):
            times.append(KernelTime(key, layer, family, min(ms for ms in options if ms is not None)))
    family_times.write(log_dir, times)
    return times
