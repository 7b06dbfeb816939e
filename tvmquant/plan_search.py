"""Measure every (layer, option) a budget planner can choose: its deployed bytes and the output error it causes.

An option is a method with weight and activation bits (or float32). For each one the layer alone is quantized
(every other layer stays float32) and the network is run on the calibration data:

- error: the mean KL divergence of the quantized network's softmax from the fp32 one (a classifier's output;
  other outputs: squared error over the fp32 output's energy). This is the measured form of HAWQ's
  second-order estimate (KL ~ 1/2 d^T F d with F the Fisher matrix of the output), so errors of different
  layers add to first order, which is what lets the solver (plan_solve.py) treat the plan's error as a sum.
- flips: the fraction of calibration samples whose top-1 class changes; summed, an estimate of the accuracy
  the plan loses.
- Skipped without running: an option that deploys no fewer bytes than float32 (which has no error) or than
  the same weights with wider activations (fewer activation bits only add rounding noise; this is the one
  pruning that is not exact).
- bytes: the constants the kernel family picked for the quantized layer stores (plan_apply.deployed), not
  bits x weights: an 8-bit-activation layer on the int8 kernel stores a byte per weight whatever its
  weight bits.

The quantized network is evaluated in float32 (fake-quantized inputs, dequantized weights: train.QuantForward),
which equals the integer reference to 1e-4 relative and is far faster for codebook layers.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import fx

from .batching import run_batched
from .frontend import LayerInfo
from .names import METHODS
from .plan import FLOAT, NEEDS_TWO_BITS, LayerChoice
from .plan_apply import deployed, input_shapes, quantize_choice, supported_layers
from .quantize import QuantConfig, calibrate_activations
from .scheme import ActQuant, LayerScheme, WeightQuant
from .train import QuantForward

WBITS = (1, 2, 3, 4, 5, 6, 8)
ABITS = (2, 3, 4, 8)


def output_error(reference: np.ndarray, outputs: np.ndarray) -> tuple[float, float]:
    """(error, flips) of `outputs` against the fp32 `reference` (see the module docstring)."""
    ref, out = reference.reshape(len(reference), -1), outputs.reshape(len(outputs), -1)
    if ref.shape[1] > 1:
        log_p = torch.log_softmax(torch.from_numpy(ref).double(), 1)
        log_q = torch.log_softmax(torch.from_numpy(out).double(), 1)
        error = float((log_p.exp() * (log_p - log_q)).sum(1).mean())
        return max(error, 0.0), float((ref.argmax(1) != out.argmax(1)).mean())
    return float(((out - ref) ** 2).sum() / max((ref**2).sum(), 1e-30)), 0.0


def quantized_outputs(
    gm: fx.GraphModule, layers: list[LayerInfo], acts: dict[str, ActQuant], weights: dict[str, WeightQuant],
    calib: np.ndarray, batch_size: int,
) -> np.ndarray:
    """The network with these layers quantized (float32 evaluation), on the calibration data."""
    forward = QuantForward(gm, layers, acts, exported=weights)

    def run(chunk: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return forward.run(torch.from_numpy(chunk)).numpy()

    return run_batched(run, calib, batch_size)


def choices(methods: tuple[str, ...] = METHODS, wbits: tuple[int, ...] = WBITS) -> list[tuple[str, int]]:
    """(method, weight bits) pairs to try; INQ and multipoint need two bits."""
    return [(m, b) for m in methods for b in wbits if not (m in NEEDS_TWO_BITS and b < 2)]


def measure_options(
    gm: fx.GraphModule, layers: list[LayerInfo], calib: np.ndarray, base: QuantConfig, batch_size: int,
    kernel: str = "auto", methods: tuple[str, ...] = METHODS, wbits: tuple[int, ...] = WBITS,
    abits: tuple[int, ...] = ABITS, progress: Callable[[str], None] = print,
) -> dict[str, list[LayerChoice]]:
    """Every option of every supported layer, measured (bytes, family, error, flips); float32 included.
    Runs torch on one thread: its many small forwards were 10-100x slower with two threads on a loaded
    2-core machine (thread hand-offs), and no faster on a quiet one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(gm, layers, calib, base, batch_size, kernel, methods, wbits, abits, progress)
    finally:
        torch.set_num_threads(threads)


def _measure(
    gm: fx.GraphModule, layers: list[LayerInfo], calib: np.ndarray, base: QuantConfig, batch_size: int,
    kernel: str, methods: tuple[str, ...], wbits: tuple[int, ...], abits: tuple[int, ...],
    progress: Callable[[str], None],
) -> dict[str, list[LayerChoice]]:
    todo = supported_layers(layers)
    with torch.no_grad():
        reference = run_batched(lambda x: gm(torch.from_numpy(x)).numpy(), calib, batch_size)
    shapes = input_shapes(gm, todo, calib[:batch_size])
    acts = {a: calibrate_activations(gm, [(info, 8, a) for info in todo], calib, batch_size, base.act_scale)
            for a in abits}
    options: dict[str, list[LayerChoice]] = {}
    for info in todo:
        start = time.monotonic()
        found = [LayerChoice(FLOAT, bytes=4 * gm.get_parameter(info.weight).numel(), error=0.0, flips=0.0)]
        for method, w in choices(methods, wbits):
            shared, smallest = None, found[0].bytes  # weights that do not depend on the act quantizer: once
            for a in sorted(abits, reverse=True):
                act = acts[a][info.name]
                choice = LayerChoice(method, w, a)
                weight = shared if shared is not None else quantize_choice(gm, info, choice, act, calib, base, batch_size)
                shared = weight if method != "multipoint" else None
                layer = LayerScheme(info.name, info.op, weight, act, info.stride, info.padding)
                family, size = deployed(layer, shapes[info.name], kernel)
                if size >= smallest:  # float32 (no error) or wider activations cost no more: not worth measuring
                    continue
                smallest = size
                out = quantized_outputs(gm, layers, {info.name: act}, {info.name: weight}, calib, batch_size)
                error, flips = output_error(reference, out)
                found.append(LayerChoice(method, w, a, family, size, error, flips))
        options[info.name] = found
        progress(f"  plan: measured {len(found)} options of {info.name} in {time.monotonic() - start:.0f} s")
    return options
