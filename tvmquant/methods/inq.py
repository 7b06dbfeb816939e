"""INQ (Zhou et al. 2017): power-of-two weights, quantized incrementally by magnitude with persistent masks.

Code set per layer from s = max|W| and b bits: n1 = floor(log2(4s/3)), n2 = n1 + 1 - 2^(b-2), values
{0, ±2^n2, ..., ±2^n1}: 2^(b-1) + 1 values ("b bits" = a zero flag/sign bit plus b-1 bits). Rounding is
nearest in the linear domain (boundary between 2^n and 2^(n+1) at 1.5*2^n, |w| < 2^(n2-1) -> 0); ties keep the
smaller magnitude, as the authors' code does.

Deviation at b = 2 bits, ternary (`n1="auto"`, the default): n1 is chosen per layer by least squares, the n <= the
paper's n1 that minimises ||W - round(W)||² on the pretrained weights. The paper's rule puts 2^n1 at 0.5-1x max|W|,
which at 2-3 bits leaves only 0.1-2 % of a typical middle layer's weights nonzero (11 % accuracy on the
reproduce.py model at W2A8 PTQ). From 3 bits the paper's rule is kept: least squares at 3 bits helped the
reproduce.py model (W3A8 96.96 % -> 99.56 %) but cost the built-in digits CNN 13 points (97.2 % -> 83.9 % at
W3A4), so weight MSE is not a safe criterion there (`n1="lsq"` asks for it at any width, `n1="paper"` never).

Deviation for wide layers: layers of `uniform_bits` (8) or more bits, i.e. the 8-bit first/last layers, use the
uniform quantizer (as under qnet and balanced). A power-of-two grid keeps a factor-2 step between its top levels
at any width, so an 8-bit INQ layer is no finer than a 4-bit one where the weights are (up to 1/3 relative
error); on the built-in digits CNN its 16-channel, 9-tap first layer alone cost 2 points: W5A8 PTQ 96.67 % with
pow2 edges, 99.17 % (= fp32) with uniform edges, W4A8 96.67 % -> 98.61 % (360 test digits). The paper quantizes
every layer to the same b-bit set (and retrains); `uniform_bits=9` keeps the pow2 edges.

Choices recorded here: n1 is computed once, from the pretrained weights, and kept for the whole schedule; the
partition mask is persistent (new weights are chosen only among the still-float ones, largest |w| first), which
is the paper's intent rather than the code's per-step rebuild. Biases stay float; activations use the shared
uniform ActQuant (the paper is weight-only; our kernels want integer activations). Representation: POW2 with
exp_max = n1, so code index k >= 1 stands for 2^(n1 - (k - 1)) and the top bit is the sign.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from ..scheme import WeightKind, WeightQuant
from . import uniform

# Accumulated portions from the paper's tables (ResNet-18 at 2, 3, 4 bits; 5-bit VGG/ResNet schedule above).
PORTIONS = {
    2: (0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.975, 1.0),
    3: (0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
    4: (0.3, 0.5, 0.8, 0.9, 0.95, 1.0),
}
DEFAULT_PORTIONS = (0.5, 0.75, 0.875, 1.0)


def check_bits(bits: int) -> None:
    if bits < 2:
        raise UserError("INQ needs at least 2 weight bits (2 bits = ternary {0, ±2^n1})")


def exponent_range(max_abs: float, bits: int) -> tuple[int, int]:
    """(n1, n2) of the layer's power-of-two set."""
    n1 = int(np.floor(np.log2(4.0 * max(max_abs, 1e-30) / 3.0)))
    return n1, n1 + 1 - (1 << (bits - 2))


def power_set(n1: int, bits: int) -> np.ndarray:
    """The sorted non-negative magnitudes {0, 2^n2, ..., 2^n1}."""
    n2 = n1 + 1 - (1 << (bits - 2))
    return np.concatenate([[0.0], np.exp2(np.arange(n2, n1 + 1, dtype=np.float64))])


def round_pow2(values: np.ndarray, n1: int, bits: int) -> np.ndarray:
    """Nearest value of {0, ±2^n2..±2^n1}; on an exact tie the smaller magnitude wins."""
    mags = power_set(n1, bits)
    mag = np.abs(values.astype(np.float64))
    upper = (mags[:-1] + mags[1:]) / 2  # a magnitude strictly above upper[i] rounds past mags[i]
    index = np.searchsorted(upper, mag, side="left")
    return np.sign(values) * mags[np.minimum(index, len(mags) - 1)]


def to_weight_quant(values: np.ndarray, n1: int, bits: int) -> WeightQuant:
    """Encode power-of-two values (already in the set) as POW2 codes."""
    mag = np.abs(values)
    index = np.where(mag > 0, n1 - np.round(np.log2(np.where(mag > 0, mag, 1.0))) + 1, 0).astype(np.int64)
    codes = index | np.where(values < 0, 1 << (bits - 1), 0)
    out = values.shape[0]
    return WeightQuant(WeightKind.POW2, bits, codes.astype(np.uint8), scale=np.ones(out), exp_max=np.full(out, n1))


N1_RULES = ("auto", "paper", "lsq")
LSQ_MAX_BITS = 2  # `n1="auto"` uses least squares up to this width (ternary), the paper's rule above it
_LSQ_SEARCH = 12  # exponents tried below the paper's n1


def choose_n1(weight: np.ndarray, bits: int, rule: str = "auto") -> int:
    """The layer's top exponent: the paper's floor(log2(4 max|W| / 3)), or the least-squares n <= it."""
    if rule not in N1_RULES:
        raise ValueError(f"unknown INQ n1 rule '{rule}'; known: {', '.join(N1_RULES)}")
    paper, _ = exponent_range(float(np.abs(weight).max()), bits)
    if rule == "paper" or (rule == "auto" and bits > LSQ_MAX_BITS):
        return paper
    flat = weight.ravel().astype(np.float64)
    errors = [float(((flat - round_pow2(flat, n, bits)) ** 2).sum()) for n in range(paper, paper - _LSQ_SEARCH, -1)]
    return paper - int(np.argmin(errors))


UNIFORM_BITS = 8  # layers this wide (the 8-bit edges) use the uniform quantizer (module docstring)


def quantize_weight(weight: np.ndarray, bits: int, n1: str = "auto", uniform_bits: int = UNIFORM_BITS) -> WeightQuant:
    """All weights at once (the last step of the schedule, or INQ used as plain post-training rounding)."""
    check_bits(bits)
    if bits >= uniform_bits:
        return uniform.quantize_weight(weight, bits)
    top = choose_n1(weight, bits, n1)
    return to_weight_quant(round_pow2(weight, top, bits), top, bits)


class IncrementalState:
    """One layer's INQ state: its exponent n1 (fixed) and the persistent mask of frozen, quantized weights."""

    def __init__(self, weight: torch.Tensor, bits: int, n1: str = "auto"):
        check_bits(bits)
        self.bits = bits
        self.n1 = choose_n1(weight.detach().numpy(), bits, n1)
        self.frozen = torch.zeros_like(weight, dtype=torch.bool)
        self.values = weight.detach().clone()

    def advance(self, weight: torch.Tensor, portion: float) -> None:
        """Quantize and freeze the largest-|w| still-float weights until `portion` of the layer is frozen."""
        with torch.no_grad():
            target = int(round(portion * weight.numel()))
            extra = target - int(self.frozen.sum())
            if extra <= 0:
                return
            mag = weight.abs().masked_fill(self.frozen, -1.0).flatten()
            chosen = torch.topk(mag, extra).indices
            self.frozen.view(-1)[chosen] = True
            snapped = round_pow2(weight.numpy(), self.n1, self.bits)
            weight.copy_(torch.where(self.frozen, torch.from_numpy(snapped).to(weight.dtype), weight))
            self.values = weight.detach().clone()

    def hold(self, weight: torch.Tensor) -> None:
        """Undo any optimizer update of frozen weights (momentum and weight decay included): the masked update."""
        with torch.no_grad():
            weight.copy_(torch.where(self.frozen, self.values, weight))

    def export(self, weight: torch.Tensor) -> WeightQuant:
        return to_weight_quant(round_pow2(weight.detach().numpy(), self.n1, self.bits), self.n1, self.bits)
