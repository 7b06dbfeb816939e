"""The method-specific half of quantization-aware training: what each method does to a layer's weight in the
training forward, after each optimizer step, and at export. The shared loop is train.py.

Every trainer sees layers in model order and a progress p in [0, 1) through the whole run.
"""

from __future__ import annotations

import numpy as np
import torch

from .methods import balanced, inq, qnet, uniform, uniq
from .scheme import WeightQuant

FLOAT, NOISE, QUANT = "float", "noise", "quant"  # activation modes for one layer's input


class Trainer:
    """Default behaviour: straight-through quantized weights, quantized activations, nothing after a step."""

    def __init__(self, weights: dict[str, torch.nn.Parameter], bits: dict[str, int]):
        self.weights, self.bits, self.order = weights, bits, list(weights)

    def param_groups(self, lr: float) -> list[dict]:
        """Extra trainable parameters of the quantizers (QN's α, β) as optimizer groups with their own lr."""
        return []

    def total_steps(self, run_steps: int) -> int:
        """How many optimizer steps the method trains for, given the steps of the requested epochs."""
        return run_steps

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


def straight_through(weight: torch.Tensor, quant: WeightQuant) -> torch.Tensor:
    """Forward: the quantized values; gradient: the identity onto the float weight."""
    return weight + (torch.from_numpy(quant.dequantize()).to(weight.dtype) - weight).detach()


class UniformTrainer(Trainer):
    """The uniform baseline with the same training loop (straight-through gradient), so a method and its baseline
    get the same training budget. The per-channel MSE clipping ratio is searched again every `refresh` steps
    (the search is the slow part); codes are re-rounded every step."""

    def __init__(self, weights, bits, refresh: int = 10):
        super().__init__(weights, bits)
        self.refresh, self.step, self.scales = refresh, 0, {}

    def start_step(self, progress: float) -> None:
        if self.step % self.refresh == 0:
            self.scales = {name: self._search(name).scale for name in self.order}
        self.step += 1

    def _search(self, name: str) -> WeightQuant:
        return uniform.quantize_weight(self.weights[name].detach().numpy(), self.bits[name])

    def weight(self, name: str) -> torch.Tensor:
        w = self.weights[name]
        return straight_through(w, uniform.quantize_with_scale(w.detach().numpy(), self.bits[name], self.scales[name]))

    def export(self, name: str) -> WeightQuant:
        return self._search(name)


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
    """INQ: every accumulated portion but the last trains for a fixed budget of `portion_steps` optimizer steps
    (default: the steps of the requested epochs, as the paper retrains for a fixed number of iterations per
    portion); the final portion, 1.0, is applied at export, as in the paper nothing is left to train then. Frozen
    weights get no gradient and are restored after every step, so momentum and weight decay cannot move them.
    Layers of inq.UNIFORM_BITS or more bits (the 8-bit edges) train as the uniform baseline does.
    Options: portion_steps, n1 (inq.choose_n1), uniform_bits."""

    def __init__(self, weights, bits, portion_steps: int | None = None, n1: str = "auto",
                 uniform_bits: int = inq.UNIFORM_BITS):
        super().__init__(weights, bits)
        wide = {name: b for name, b in bits.items() if b >= uniform_bits}
        self.edges = UniformTrainer({name: weights[name] for name in wide}, wide)
        narrow = {name: w for name, w in weights.items() if name not in wide}
        self.states = {name: inq.IncrementalState(w, bits[name], n1) for name, w in narrow.items()}
        self.portions = {name: inq.PORTIONS.get(bits[name], inq.DEFAULT_PORTIONS)[:-1] for name in narrow}
        self.portion_steps, self.step = portion_steps, 0

    def total_steps(self, run_steps: int) -> int:
        self.portion_steps = max(1, self.portion_steps or run_steps)
        return self.portion_steps * max([len(p) for p in self.portions.values()] or [1])

    def start_step(self, progress: float) -> None:
        index = self.step // (self.portion_steps or 1)
        for name, state in self.states.items():
            portions = self.portions[name]
            state.advance(self.weights[name], portions[min(index, len(portions) - 1)])
        self.edges.start_step(progress)
        self.step += 1

    def weight(self, name: str) -> torch.Tensor:
        if name in self.edges.weights:
            return self.edges.weight(name)
        w, frozen = self.weights[name], self.states[name].frozen
        return torch.where(frozen, w.detach(), w)

    def after_step(self) -> None:
        for name, state in self.states.items():
            state.hold(self.weights[name])

    def export(self, name: str) -> WeightQuant:
        if name in self.edges.weights:
            return self.edges.export(name)
        self.states[name].advance(self.weights[name], 1.0)
        return self.states[name].export(self.weights[name])


class BalancedTrainer(Trainer):
    """Balanced: edges and scales recomputed from the float weights every step, straight-through gradient."""

    def weight(self, name: str) -> torch.Tensor:
        return straight_through(self.weights[name], self.export(name))

    def export(self, name: str) -> WeightQuant:
        return balanced.quantize_weight(self.weights[name].detach().numpy(), self.bits[name])


class QNTrainer(Trainer):
    """Quantization Networks: sum-of-sigmoids forward at a temperature that rises with the run's progress from
    t_start to t_end, learned α, β in their own optimizer group at `quant_lr` times the network's lr (default 1:
    with the least-squares/Lloyd start α needs no faster lr, and 10x drifted on longer runs: built-in digits CNN
    W2A2 QAT, 120 steps, seeds 0-2, 96.67/97.78/97.22 % at 10x, 98.61/98.33/98.61 % at 1x; 36 steps 98.33 -> 98.61 %
    mean; reproduce.py model fold 0, 75 steps, 99.40 -> 99.28 %). Layers of
    qnet.UNIFORM_BITS or more bits (the 8-bit edges, float in the paper) train as the uniform baseline does.
    Options: t_start, t_end, quant_lr, grad, init (qnet)."""

    def __init__(self, weights, bits, t_start: float = qnet.T_START, t_end: float = qnet.T_END,
                 quant_lr: float = 1.0, grad: str = "released", init: str = "lloyd"):
        super().__init__(weights, bits)
        wide = {name: b for name, b in bits.items() if b >= qnet.UNIFORM_BITS}
        self.edges = UniformTrainer({name: weights[name] for name in wide}, wide)
        self.quantizers = {name: qnet.QNQuantizer(w.detach().numpy(), bits[name], init=init, grad=grad)
                           for name, w in weights.items() if name not in wide}
        self.t_start, self.t_end, self.quant_lr = t_start, t_end, quant_lr
        self.temperature = t_start

    def param_groups(self, lr: float) -> list[dict]:
        params = [p for q in self.quantizers.values() for p in q.parameters()]
        return [{"params": params, "lr": lr * self.quant_lr}] if params else []

    def start_step(self, progress: float) -> None:
        self.temperature = qnet.temperature(progress, self.t_start, self.t_end)
        self.edges.start_step(progress)

    def weight(self, name: str) -> torch.Tensor:
        if name in self.edges.weights:
            return self.edges.weight(name)
        return self.quantizers[name].soft(self.weights[name], self.temperature)

    def export(self, name: str) -> WeightQuant:
        if name in self.edges.weights:
            return self.edges.export(name)
        return self.quantizers[name].export(self.weights[name].detach())


TRAINERS = {"uniform": UniformTrainer, "uniq": UniqTrainer, "inq": InqTrainer, "balanced": BalancedTrainer,
            "qnet": QNTrainer}


def make_trainer(method: str, weights: dict[str, torch.nn.Parameter], bits: dict[str, int], **options) -> Trainer:
    """The method's trainer; `options` are its keyword arguments (listed in each trainer's docstring)."""
    if method not in TRAINERS:
        raise ValueError(f"method '{method}' has no training")
    return TRAINERS[method](weights, bits, **options)


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
