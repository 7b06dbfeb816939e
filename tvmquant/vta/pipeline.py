"""`compile --target vta` and `run --target vta` as Python functions (the CLI calls these; a target adapter can).

compile: quantize (power-of-two activation scales), plan which layers VTA runs, lower each to a program
(tiling from tuning records where they exist), offload those layers in the Relax graph, build the host part
with the usual pipeline, write OUT.so + OUT.json/.npz (as for every target) + OUT.vta/ (the VTA bytes).
run: register the packed functions that replay OUT.vta/ on the simulator, run the host library in the Relax
VM, and report agreement with the reference, per-layer cycles, bytes and GEMM utilisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

from .. import outputs, pipeline
from ..batching import run_batched
from ..compile import CompileResult, write_sidecar
from ..outputs import sidecar_paths
from ..passes.lower_quantized import Lowered
from ..pipeline import BuildOptions, QuantRequest, Quantized
from ..quantize import QuantConfig
from ..scheme import QuantScheme
from ..source import ModelSource
from ..target import TargetSpec
from . import artifact
from .config import VtaConfig
from .cycles import Counters
from .lower import geometry
from .model import VtaReference, plan_model
from .offload import OffloadToVta, offloaded_layers, packed_name
from .program import MODULES
from .runtime import VtaProgram, compile_layer, run_float
from .simulator import START_ORDERS
from .tune import load_tilings


def vta_quant_config(config: QuantConfig, vta: VtaConfig) -> tuple[QuantConfig, list[str]]:
    """Bits that the core can hold: a symmetric b-bit weight grid has odd integer levels up to 2^b - 1, which
    need b + 1 signed bits, so weights get at most wgt_bits - 1; activations at most inp_bits; power-of-two
    activation scales. Returns the config and notes on what changed."""
    wmax, amax = max(1, vta.wgt_bits - 1), vta.inp_bits
    fl = config.first_last_bits
    new = replace(config, wbits=min(config.wbits, wmax), abits=min(config.abits, amax), act_scale="pow2",
                  first_last_bits=None if fl is None else min(fl, wmax, amax))
    why_w = f"{vta.wgt_bits}-bit signed weights hold a symmetric grid of at most {wmax} bits"
    why_a = f"the core takes {amax}-bit inputs"
    notes = [f"{what} {old} -> {now} ({why})"
             for what, old, now, why in (("weight bits", config.wbits, new.wbits, why_w),
                                         ("activation bits", config.abits, new.abits, why_a),
                                         ("first/last-layer bits", fl, new.first_last_bits, f"{why_w}; {why_a}"))
             if old != now]
    return new, notes


@dataclass
class VtaCompileResult:
    result: CompileResult
    vta: VtaConfig
    programs: dict[str, VtaProgram]
    host_reasons: dict[str, str]
    notes: list[str] = field(default_factory=list)
    tuned: list[str] = field(default_factory=list)


def _layer_params(source: ModelSource, param_fqn: dict[str, str], names: set[str]) -> tuple[dict, dict]:
    """(weight param, bias param) of each VTA layer, from the folded FX graph."""
    by_fqn = {fqn: p for p, fqn in param_fqn.items()}
    weight, bias = {}, {}
    nodes = {n.name: n for n in source.gm.graph.nodes}
    for info in source.layers:
        if info.name not in names:
            continue
        node = nodes[info.node]
        weight[info.name] = by_fqn[info.weight]
        if len(node.args) > 2 and node.args[2] is not None and node.args[2].op == "get_attr":
            bias[info.name] = by_fqn[node.args[2].target]
    return weight, bias


def _input_shapes(source: ModelSource, names: set[str]) -> dict[str, tuple[int, ...]]:
    from torch import fx

    shapes = {}
    node_layer = {info.node: info.name for info in source.layers if info.name in names}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            if n.name in node_layer:
                shapes[node_layer[n.name]] = tuple(self.env[n.args[0]].shape)
            return super().run_node(n)

    import torch

    with torch.no_grad():
        Recorder(source.gm).run(torch.zeros(source.input_shape))
    return shapes


def compile_vta(source: ModelSource, request: QuantRequest, target: TargetSpec, vta: VtaConfig, output: Path,
                tuning_logs: list[Path] = (), kernel: str = "auto") -> VtaCompileResult:
    """`tuning_logs`: folders of VTA tiling records (tune.py) to apply. The host part goes through the usual
    pipeline (pipeline.build), with VTA's layers offloaded before the other quantized layers are lowered."""
    config, notes = vta_quant_config(request.config, vta)
    quantized = pipeline.quantize(source, replace(request, config=config))
    gm, scheme = quantized.gm, quantized.scheme
    source = replace(source, gm=gm)
    vta_layers, host_reasons = plan_model(gm, source.layers, scheme, vta, source.calib)
    shapes = _input_shapes(source, set(vta_layers))
    tilings = load_tilings(list(tuning_logs), vta)
    programs, tuned = {}, []
    for name, layer in vta_layers.items():
        key = geometry(layer, shapes[name], vta.block).key()
        programs[name] = compile_layer(layer, shapes[name], vta, tilings.get(key))
        if key in tilings:
            tuned.append(name)

    def offload(mod: tvm.IRModule, param_fqn: dict[str, str]) -> tvm.IRModule:
        weight, bias = _layer_params(source, param_fqn, set(vta_layers))
        mod = OffloadToVta(weight, bias)(mod)
        missing = set(vta_layers) - offloaded_layers(mod)
        if missing:
            raise AssertionError(f"layers planned for VTA but not found in the Relax graph: {sorted(missing)}")
        return mod

    host_scheme = QuantScheme({k: v for k, v in scheme.layers.items() if k not in vta_layers}, scheme.kept_float)
    built = pipeline.build(source, Quantized(host_scheme, gm), target, BuildOptions(kernel), prepare=offload)
    lowered = Lowered({**built.lowered.kernels, **{n: "vta" for n in vta_layers}},
                      {**built.lowered.const_bytes, **{n: len(p.images["wgt"]) + len(p.images["acc"]) for n, p in programs.items()}},
                      {**built.lowered.notes, **host_reasons})
    reference = VtaReference(gm, source.layers, scheme, vta_layers)
    ref_out = run_batched(reference, source.eval_x, source.batch_size, "quantized reference (VTA arithmetic)")
    result = CompileResult(source, replace(request, config=config), target, scheme, lowered, output, ref_out,
                           list(tuning_logs), tuned)
    with outputs.replace_together(output, *sidecar_paths(output)) as (lib, meta, data):
        result.linked_with = pipeline.export(built.executable, target, lib)
        write_sidecar(result, meta, data)
    artifact.write(output, programs, vta)
    return VtaCompileResult(result, vta, programs, host_reasons, notes, tuned)


@dataclass
class LayerStats:
    calls: int = 0
    counters: Counters = field(default_factory=Counters)


def register(programs: dict[str, VtaProgram], order: list[tuple[str, ...]]) -> dict[str, LayerStats]:
    """Install the packed functions the host library calls; each runs its layer on the simulator, with the
    modules started in order[0] (a list, so the caller can change it between runs)."""
    stats = {name: LayerStats() for name in programs}

    def make(name: str, prog: VtaProgram):
        def run(x, out):
            y, counters = run_float(prog, x.numpy(), order[0])
            stats[name].calls += 1
            stats[name].counters.add(counters)
            out.copyfrom(np.ascontiguousarray(y, np.float32))
        return run

    for name, prog in programs.items():
        tvm_ffi.register_global_func(packed_name(name), make(name, prog), override=True)
    return stats


class VtaModule:
    """The artifact loaded here: host library in the Relax VM, VTA layers on the simulator."""

    def __init__(self, artifact_path: Path):
        self.config, self.programs = artifact.read(artifact_path)
        self.order = [MODULES]
        self.stats = register(self.programs, self.order)
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(artifact_path)), tvm.cpu())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x, np.float32))).numpy()

    def same_under_every_start_order(self, x: np.ndarray) -> bool:
        """Run x with the load/compute/store modules started in each of the 6 orders: same output bytes?"""
        outputs = []
        for order in START_ORDERS:
            self.order[0] = order
            outputs.append(self(x))
        self.order[0] = MODULES
        for s in self.stats.values():  # the counters report the evaluation runs only
            s.calls, s.counters = 0, Counters()
        return all(np.array_equal(o, outputs[0]) for o in outputs)
