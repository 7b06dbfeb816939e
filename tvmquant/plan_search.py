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
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import fx

from .batching import run_batched
from .errors import UserError
from .frontend import LayerInfo
from .names import METHODS
from .plan import FLOAT, NEEDS_TWO_BITS, LayerChoice
from .plan_apply import deployed, input_shapes, quantize_choice, supported_layers
from .quantize import QuantConfig, calibrate_activations
from .scheme import ActQuant, LayerScheme, WeightQuant
from .target import TargetSpec
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
    target: TargetSpec, kernel: str = "auto", methods: tuple[str, ...] = METHODS, wbits: tuple[int, ...] = WBITS,
    abits: tuple[int, ...] = ABITS, budget: int | None = None, progress: Callable[[str], None] = print,
) -> dict[str, list[LayerChoice]]:
    """Every option of every supported layer, measured (bytes, family, error, flips); float32 included.
    With a `budget`, options no plan within it can hold are not run, and a budget below the smallest plan is
    a UserError before any is. Runs torch on one thread: its many small forwards were 10-100x slower with two
    threads on a loaded 2-core machine (thread hand-offs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        todo = supported_layers(layers)
        shapes = input_shapes(gm, todo, calib[:batch_size])
        acts = {a: calibrate_activations(gm, [(info, 8, a) for info in todo], calib, batch_size, base.act_scale)
                for a in abits}
        found = {info.name: _sized(gm, info, acts, shapes[info.name], calib, base, batch_size, target, kernel, methods, wbits)
                 for info in todo}
        if budget is not None:
            found = _within(found, budget)
        return _measure(gm, layers, found, calib, batch_size, progress)
    finally:
        torch.set_num_threads(threads)


@dataclass
class _Sized:
    choice: LayerChoice  # family and bytes known, error not yet
    weight: WeightQuant | None  # None: float32
    act: ActQuant | None


def _sized(
    gm: fx.GraphModule, info: LayerInfo, acts: dict[int, dict[str, ActQuant]], shape: tuple[int, ...],
    calib: np.ndarray, base: QuantConfig, batch_size: int, target: TargetSpec, kernel: str, methods: tuple[str, ...],
    wbits: tuple[int, ...],
) -> list[_Sized]:
    """A layer's options with their deployed bytes, those not worth running left out (module docstring)."""
    found = [_Sized(LayerChoice(FLOAT, bytes=4 * gm.get_parameter(info.weight).numel()), None, None)]
    for method, w in choices(methods, wbits):
        shared, smallest = None, found[0].choice.bytes  # weights that do not depend on the act quantizer: once
        for a in sorted(acts, reverse=True):
            act = acts[a][info.name]
            choice = LayerChoice(method, w, a)
            weight = shared if shared is not None else quantize_choice(gm, info, choice, act, calib, base, batch_size)
            shared = weight if method != "multipoint" else None
            family, size = deployed(LayerScheme(info.name, info.op, weight, act, info.stride, info.padding), shape, target, kernel)
            if size < smallest:
                smallest = size
                found.append(_Sized(LayerChoice(method, w, a, family, size), weight, act))
    return found


def _within(found: dict[str, list[_Sized]], budget: int) -> dict[str, list[_Sized]]:
    """Only options that fit beside the other layers' smallest ones (exact: no plan within budget uses another)."""
    smallest = {name: min(o.choice.bytes for o in opts) for name, opts in found.items()}
    total = sum(smallest.values())
    if total > budget:
        raise UserError(f"budget of {budget} B is below the smallest plan this model has ({total} B deployed)")
    return {name: [o for o in opts if o.choice.bytes <= budget - total + smallest[name]] for name, opts in found.items()}


def _measure(
    gm: fx.GraphModule, layers: list[LayerInfo], found: dict[str, list[_Sized]], calib: np.ndarray,
    batch_size: int, progress: Callable[[str], None],
) -> dict[str, list[LayerChoice]]:
    with torch.no_grad():
        reference = run_batched(lambda x: gm(torch.from_numpy(x)).numpy(), calib, batch_size)
    options: dict[str, list[LayerChoice]] = {}
    for name, opts in found.items():
        start, measured = time.monotonic(), []
        for o in opts:
            if o.weight is None:
                measured.append(replace(o.choice, error=0.0, flips=0.0))
                continue
            out = quantized_outputs(gm, layers, {name: o.act}, {name: o.weight}, calib, batch_size)
            error, flips = output_error(reference, out)
            measured.append(replace(o.choice, error=error, flips=flips))
        options[name] = measured
        progress(f"  plan: measured {len(measured)} options of {name} in {time.monotonic() - start:.0f} s")
    return options
