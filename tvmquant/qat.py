"""The method-specific half of quantization-aware training: what each method does to a layer's weight in the
training forward, after each optimizer step, and at export. The shared loop is train.py.

Every trainer sees layers in model order and a progress p in [0, 1) through the whole run.
"""

from __future__ import annotations

import numpy as np
import torch

from .methods import balanced, inq, qnet, uniq
from .scheme import WeightQuant

FLOAT, NOISE, QUANT = "float", "noise", "quant"  # activation modes for one layer's input


class Trainer:
    """Default behaviour: straight-through quantized weights, quantized activations, nothing after a step."""

    def __init__(self, weights: dict[str, torch.nn.Parameter], bits: dict[str, int]):
        self.weights, self.bits, self.order = weights, bits, list(weights)

    def parameters(self) -> list[torch.nn.Parameter]:
        """Extra trainable parameters of the quantizers (QN's α, β)."""
        return []

    def start_step(self, progress: float) -> None:
        """Called before every training step."""

    def weight(self, name: str) -> torch.Tensor:
        """The weight the training forward uses."""
        raise NotImplementedError

    def act_mode(self, name: str) -> str:
        return QUANT

    def after_step(self) -> None:
        """Called after every optimizer step."""

    def export(self, name: str) -> WeightQuant:
        raise NotImplementedError


class UniqTrainer(Trainer):
    """Gradual UNIQ: layer s of L is noised while progress is in [s/L, (s+1)/L); layers before it are quantized
    and frozen (their forward weight is detached, so no gradient reaches them); layers after it, and their input
    activations, stay float. One stage = one weight layer and its input activation."""

    stage = 0

    def start_step(self, progress: float) -> None:
        self.stage = min(int(progress * len(self.order)), len(self.order) - 1)

    def _index(self, name: str) -> int:
        return self.order.index(name)

    def weight(self, name: str) -> torch.Tensor:
        w, i = self.weights[name], self._index(name)
        if i < self.stage:
            return torch.from_numpy(self.export(name).dequantize()).to(w.dtype)
        if i == self.stage:
            return uniq.noisy_weight(w, self.bits[name])
        return w

    def act_mode(self, name: str) -> str:
        i = self._index(name)
        return QUANT if i < self.stage else NOISE if i == self.stage else FLOAT

    def export(self, name: str) -> WeightQuant:
        return uniq.quantize_weight(self.weights[name].detach().numpy(), self.bits[name])


class InqTrainer(Trainer):
    """INQ: the accumulated portions are spread evenly over the run (the final portion, 1.0, is applied at
    export, as in the paper nothing is left to train then); frozen weights get no gradient and are restored after
    every step, so momentum and weight decay cannot move them."""

    def __init__(self, weights, bits):
        super().__init__(weights, bits)
        self.states = {name: inq.IncrementalState(w, bits[name]) for name, w in weights.items()}
        self.portions = {name: inq.PORTIONS.get(b, inq.DEFAULT_PORTIONS) for name, b in bits.items()}

    def start_step(self, progress: float) -> None:
        for name, state in self.states.items():
            portions = self.portions[name][:-1]
            state.advance(self.weights[name], portions[min(int(progress * len(portions)), len(portions) - 1)])

    def weight(self, name: str) -> torch.Tensor:
        w, frozen = self.weights[name], self.states[name].frozen
        return torch.where(frozen, w.detach(), w)

    def after_step(self) -> None:
        for name, state in self.states.items():
            state.hold(self.weights[name])

    def export(self, name: str) -> WeightQuant:
        self.states[name].advance(self.weights[name], 1.0)
        return self.states[name].export(self.weights[name])


class BalancedTrainer(Trainer):
    """Balanced: edges and scale recomputed from the float weights every step, straight-through gradient."""

    def weight(self, name: str) -> torch.Tensor:
        return balanced.ste_weight(self.weights[name], self.bits[name])

    def export(self, name: str) -> WeightQuant:
        return balanced.quantize_weight(self.weights[name].detach().numpy(), self.bits[name])


class QNTrainer(Trainer):
    """Quantization Networks: sum-of-sigmoids forward with the temperature of the current epoch, learned α, β."""

    def __init__(self, weights, bits, epochs: int, delta_t: float = 10.0):
        super().__init__(weights, bits)
        self.quantizers = {name: qnet.QNQuantizer(w.detach().numpy(), bits[name]) for name, w in weights.items()}
        self.epochs, self.delta_t, self.temperature = epochs, delta_t, qnet.temperature(0, delta_t)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for q in self.quantizers.values() for p in q.parameters()]

    def start_step(self, progress: float) -> None:
        self.temperature = qnet.temperature(int(progress * self.epochs), self.delta_t)

    def weight(self, name: str) -> torch.Tensor:
        return self.quantizers[name].soft(self.weights[name], self.temperature)

    def export(self, name: str) -> WeightQuant:
        return self.quantizers[name].export(self.weights[name].detach())


def make_trainer(method: str, weights: dict[str, torch.nn.Parameter], bits: dict[str, int], epochs: int) -> Trainer:
    if method == "uniq":
        return UniqTrainer(weights, bits)
    if method == "inq":
        return InqTrainer(weights, bits)
    if method == "balanced":
        return BalancedTrainer(weights, bits)
    if method == "qnet":
        return QNTrainer(weights, bits, epochs)
    raise ValueError(f"method '{method}' has no training")


def fake_quant(x: torch.Tensor, scale: float, inv_scale: np.float32, zero_point: int, qmax: int, noise: bool) -> torch.Tensor:
    """Uniform activation quantization for training, computed as the kernels do; with `noise`, uniform noise of
    one code step instead of rounding (UNIQ). Gradient: straight through inside the clip range, zero outside
    (the ReLU-masked STE: below the zero code is the ReLU's dead side)."""
    t = x * torch.tensor(inv_scale, dtype=torch.float32)
    t = t + (torch.rand_like(t) - 0.5) if noise else torch.round(t)
    codes = torch.clamp(t + zero_point, 0, qmax)
    value = (codes - zero_point) * np.float32(scale)
    lo, hi = -zero_point * scale, (qmax - zero_point) * scale
    inside = ((x >= lo) & (x <= hi)).to(x.dtype)
    return value.detach() + (x - x.detach()) * inside
