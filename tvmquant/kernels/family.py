"""What every kernel family provides to the Relax pass, and how the pass calls it.

A family is a module with `FAMILY` (its name), `TUNABLE` (whether MetaSchedule tunes its kernels) and

    supports(layer) -> str | None            why it cannot run this layer (None: it can)
    instantiate(layer, geometry, scheduled)   -> KernelCall for one layer instance
    schedule(func) -> PrimFunc               the default schedule of its unscheduled PrimFunc

Every kernel computes exactly `scheme.integer_core(layer)`: float32 NCHW input in, float32 NCHW output out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import tirx

from ..scheme import LayerScheme
from .geometry import ConvGeometry


@dataclass
class KernelCall:
    """call_tir(prim, [x, *consts]) -> (N, O, OH, OW) float32; consts are what the artifact stores."""

    prim: tirx.PrimFunc
    consts: list[np.ndarray]

    @property
    def const_bytes(self) -> int:
        return sum(c.nbytes for c in self.consts)


def layer_geometry(layer: LayerScheme, shape: tuple[int, int, int, int]) -> ConvGeometry:
    """The conv geometry of `layer` on an NCHW input `shape` (linear layers: (rows, K, 1, 1))."""
    w = layer.weight
    kernel = tuple(w.codes.shape[-2:]) if layer.op == "conv2d" else (1, 1)
    return ConvGeometry(*shape, w.out_channels, kernel, layer.stride, layer.padding, conv_groups=layer.groups)
