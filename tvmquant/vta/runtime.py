"""Run a VTA layer's program: pack the host's tensors into DRAM images, simulate, unpack the output.

Host layouts: inputs NCHW -> NCHW1n16c (channel blocks of BLOCK lanes, zero-filled), weights OIHW ->
OIHW16o16i, the accumulator image is [bias rows | shift rows] as int32. A dense layer's (batch, K) input is a
1 x K x 1 x batch image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import bits
from .arith import HostQuant, VtaLayer, dequantize, input_codes
from .config import VtaConfig
from .cycles import Counters
from .isa import Insn
from .lower import Geometry, Tiling, build, default_tiling, geometry
from .program import MODULES
from .simulator import Dram, Simulator


def _blocks(a: np.ndarray, axis: int, block: int) -> np.ndarray:
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, -a.shape[axis] % block)
    return np.pad(a, pad)


def pack_input(codes: np.ndarray, op: str, config: VtaConfig) -> bytes:
    if op == "linear":
        codes = codes.T[None, :, None, :]
    x = _blocks(codes, 1, config.block)
    n, c, h, w = x.shape
    return bits.pack(x.reshape(n, c // config.block, config.block, h, w).transpose(0, 1, 3, 4, 2), config.inp_bits)


def pack_weights(layer: VtaLayer, config: VtaConfig) -> bytes:
    b = config.block
    w = _blocks(_blocks(layer.weight, 0, b), 1, b)
    o, c, kh, kw = w.shape
    return bits.pack(w.reshape(o // b, b, c // b, b, kh, kw).transpose(0, 2, 4, 5, 1, 3), config.wgt_bits)


def pack_acc(layer: VtaLayer, config: VtaConfig) -> bytes:
    rows = [_blocks(v.astype(np.int64), 0, config.block) for v in (layer.bias, layer.shift)]
    return bits.pack(np.concatenate(rows), 32)


def unpack_output(data: np.ndarray, host: HostQuant, g: Geometry, config: VtaConfig) -> np.ndarray:
    """Output codes in the layer's own layout: (N, O, OH, OW), or (batch, O) for linear."""
    b = config.block
    y = bits.unpack(data, config.inp_bits, g.n * g.ob * g.oh * g.ow * b).reshape(g.n, g.ob, g.oh, g.ow, b)
    y = y.transpose(0, 1, 4, 2, 3).reshape(g.n, g.ob * b, g.oh, g.ow)[:, : len(host.step)]
    return y[0, :, 0, :].T if host.op == "linear" else y


@dataclass
class VtaProgram:
    """A layer's instructions and constant DRAM images at their planned addresses, ready for any input."""

    name: str
    config: VtaConfig
    geometry: Geometry
    tiling: Tiling
    insns: list[Insn]
    plan: dict[str, tuple[int, int]]  # buffer -> (physical byte address, bytes)
    images: dict[str, bytes]  # uop, wgt, acc
    host: HostQuant


def compile_layer(layer: VtaLayer, input_shape: tuple[int, ...], config: VtaConfig,
                  tiling: Tiling | None = None) -> VtaProgram:
    g = geometry(layer, input_shape, config.block)
    tiling = tiling or default_tiling(g, config)
    program, plan = build(g, tiling, config, (layer.lo, layer.hi))
    images = {"uop": program.uop_bytes(), "wgt": pack_weights(layer, config), "acc": pack_acc(layer, config)}
    return VtaProgram(layer.name, config, g, tiling, program.insns, plan, images, HostQuant.of(layer))


def execute(prog: VtaProgram, codes: np.ndarray, order: tuple[str, ...] = MODULES, seed: int = 0
            ) -> tuple[np.ndarray, Counters]:
    """Output codes and counters of one simulated run on these input codes."""
    dram = Dram()
    dram.alloc(prog.plan["out"][0] + prog.plan["out"][1] - dram.mem.size)
    for mem, data in (prog.images | {"inp": pack_input(codes, prog.host.op, prog.config)}).items():
        dram.write(prog.plan[mem][0], data)
    counters = Simulator(prog.config, dram, seed).run(prog.insns, order)
    return unpack_output(dram.read(*prog.plan["out"]), prog.host, prog.geometry, prog.config), counters


def run_float(prog: VtaProgram, x: np.ndarray, order: tuple[str, ...] = MODULES) -> tuple[np.ndarray, Counters]:
    """The layer on float input, as the host calls it: quantize, simulate, dequantize."""
    codes, counters = execute(prog, input_codes(x, prog.host), order)
    return dequantize(codes, prog.host), counters
