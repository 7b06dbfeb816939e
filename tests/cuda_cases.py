"""One random layer per kernel family, for the CUDA tests: a layer the family runs, of any geometry."""

from __future__ import annotations

import numpy as np

from tvmquant import pipeline
from tvmquant.kernels import registry
from tvmquant.kernels.family import KernelCall, layer_geometry
from tvmquant.scheme import ActQuant, LayerScheme, WeightKind, WeightQuant
from tvmquant.target import load_target

FAMILY_BITS = {"bitserial": (2, 2), "int8": (8, 8), "multipoint": (3, 2), "shift": (3, 4), "lut": (2, 3), "dequant": (6, 4),
               "depthwise": (4, 4)}


def _weight(family: str, wbits: int, full: tuple[int, ...], rng: np.random.Generator) -> WeightQuant:
    o = full[0]
    if family in ("bitserial", "int8", "depthwise"):  # int8: UNIFORM codes, taken by the int8 family when asked
        return WeightQuant(WeightKind.UNIFORM, wbits, rng.integers(0, 1 << wbits, full),
                           scale=rng.uniform(0.01, 1, o), zero_point=rng.integers(0, 2 * (1 << wbits) - 1, o) / 2)
    if family == "shift":
        index = rng.integers(0, 1 << (wbits - 1), full)
        return WeightQuant(WeightKind.POW2, wbits, index | (rng.integers(0, 2, full) << (wbits - 1)),
                           scale=rng.uniform(0.01, 1, o), exp_max=rng.integers(-4, 3, o))
    if family == "multipoint":
        m, points = (1 << (wbits - 1)) - 1, 2
        codes = np.full((points, *full), m)
        codes[0] = rng.integers(0, 2 * m + 1, full)
        extra = rng.random(o) < 0.3
        codes[1, extra] = rng.integers(0, 2 * m + 1, (int(extra.sum()), *full[1:]))
        coeffs = np.stack([rng.uniform(0.5, 1.5, o), np.where(extra, rng.uniform(-1, 1, o), 0)])
        return WeightQuant(WeightKind.MULTIPOINT, wbits, codes, scale=rng.uniform(0.01, 0.5, (points, o)),
                           zero_point=np.full((points, o), float(m)), coeffs=coeffs)
    # lut, dequant: a codebook (6-bit codebooks are dequant's: lut refuses more than 4 bits)
    return WeightQuant(WeightKind.CODEBOOK, wbits, rng.integers(0, 1 << wbits, full),
                       levels=rng.standard_normal((o, 1 << wbits)))


def layer_for(family: str, shape: tuple, seed: int = 0, bits: tuple[int, int] | None = None) -> LayerScheme:
    """A random layer of `shape` (KERNEL_SHAPES form, optionally with conv groups as a 9th entry) that `family`
    runs, nonzero activation zero point; `bits` (weights, activations) defaults to FAMILY_BITS."""
    rng = np.random.default_rng(seed)
    wbits, abits = bits or FAMILY_BITS[family]
    n, c, h, w, o, kernel, stride, padding, *grouped = shape
    groups = grouped[0] if grouped else 1
    act = ActQuant(abits, float(rng.uniform(0.1, 0.6)) * 4 / (1 << abits), int(rng.integers(1, 1 << abits)))
    op = "linear" if (h, w, kernel) == (1, 1, (1, 1)) else "conv2d"
    weight = _weight(family, wbits, (o, c // groups, *kernel), rng)
    layer = LayerScheme("layer", op, weight, act, stride, padding, groups)
    cuda = load_target("cuda")
    chosen, _ = registry.choose(layer, cuda.tvm_target, family, pipeline.rules(cuda))
    assert chosen.name == family, f"{family} does not run this test layer"
    return layer


def unscheduled(
    family: str, shape: tuple, seed: int = 0, bits: tuple[int, int] | None = None
) -> tuple[LayerScheme, KernelCall]:
    """The layer and its family's plain (unscheduled) kernel, what the CUDA rules schedule."""
    layer = layer_for(family, shape, seed, bits)
    call = registry.FAMILIES[family].compute(layer, layer_geometry(layer, shape[:4]), load_target("cuda").tvm_target)
    return layer, call
