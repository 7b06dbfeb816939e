"""Run a lowered VTA layer: pack the host's tensors into DRAM images, simulate, unpack the output.

Host layouts: inputs NCHW -> NCHW1n16c (channel blocks of BLOCK lanes, zero-filled), weights OIHW ->
OIHW16o16i, the accumulator image is [bias rows | shift rows] as int32. A dense layer's (batch, K) input is a
1 x K x 1 x batch image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import bits
from .arith import VtaLayer
from .config import VtaConfig
from .cycles import Counters
from .lower import Geometry, Tiling, build, geometry
from .program import MODULES, Program
from .simulator import Dram, Simulator


def _blocks(a: np.ndarray, axis: int, block: int) -> np.ndarray:
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, -a.shape[axis] % block)
    return np.pad(a, pad)


def pack_input(codes: np.ndarray, layer: VtaLayer, config: VtaConfig) -> bytes:
    if layer.op == "linear":
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


def unpack_output(data: np.ndarray, layer: VtaLayer, g: Geometry, config: VtaConfig, batch: int) -> np.ndarray:
    """Output codes in the layer's own layout: (N, O, OH, OW), or (batch, O) for linear."""
    b = config.block
    y = bits.unpack(data, config.inp_bits, g.n * g.ob * g.oh * g.ow * b).reshape(g.n, g.ob, g.oh, g.ow, b)
    y = y.transpose(0, 1, 4, 2, 3).reshape(g.n, g.ob * b, g.oh, g.ow)[:, : len(layer.weight)]
    return y[0, :, 0, :].T if layer.op == "linear" else y


@dataclass
class CompiledLayer:
    """A layer's program and constant images, ready to run on any input of its shape."""

    layer: VtaLayer
    config: VtaConfig
    geometry: Geometry
    tiling: Tiling
    program: Program
    plan: dict[str, tuple[int, int]]
    images: dict[str, bytes]
    batch: int


def compile_layer(layer: VtaLayer, input_shape: tuple[int, ...], config: VtaConfig, tiling: Tiling | None = None) -> CompiledLayer:
    from .lower import default_tiling

    g = geometry(layer, input_shape, config.block)
    tiling = tiling or default_tiling(g, config)
    program, plan = build(g, tiling, config, (layer.lo, layer.hi))
    images = {"uop": program.uop_bytes(), "wgt": pack_weights(layer, config), "acc": pack_acc(layer, config)}
    return CompiledLayer(layer, config, g, tiling, program, plan, images, input_shape[0])


def execute(compiled: CompiledLayer, codes: np.ndarray, order: tuple[str, ...] = MODULES, seed: int = 0
            ) -> tuple[np.ndarray, Counters]:
    """Output codes and counters of one simulated run on these input codes."""
    c = compiled
    dram = Dram()
    dram.alloc(c.plan["out"][0] + c.plan["out"][1] - dram.mem.size)
    for mem, data in (c.images | {"inp": pack_input(codes, c.layer, c.config)}).items():
        dram.write(c.plan[mem][0], data)
    counters = Simulator(c.config, dram, seed).run(c.program.insns, order)
    out = dram.read(*c.plan["out"])
    return unpack_output(out, c.layer, c.geometry, c.config, c.batch), counters
