"""Every quantization method, registered once: its name, the weight kinds it yields, its post-training
quantizer, its QAT trainer, and its options with their checks. quantize.py, qat/train and the CLI
(`--method`, `--method-opt KEY=VALUE`) read only this table (MLC-LLM's named presets behind one protocol).

A new method = its module under methods/ + one `Method(...)` entry in METHODS (+ its trainer in qat.py if
it trains).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UserError
from ..scheme import WeightKind, WeightQuant
from . import balanced, inq, multipoint, qnet, uniform, uniq


@dataclass(frozen=True)
class Option:
    """One method option: `parse` turns the CLI text into the value, `choices` (if any) bound it."""

    name: str
    default: Any
    help: str
    parse: Callable[[str], Any] = str
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = None  # why a value is invalid, or None

    def validate(self, method: str, value: Any) -> Any:
        if isinstance(value, str) and self.parse is not str:
            try:
                value = self.parse(value)
            except ValueError:
                raise UserError(f"method '{method}' option {self.name}: cannot read '{value}'") from None
        if self.choices is not None and value not in self.choices:
            raise UserError(f"method '{method}' option {self.name} must be one of {', '.join(self.choices)}, got '{value}'")
        reason = self.check(value) if self.check else None
        if reason:
            raise UserError(f"method '{method}' option {self.name}: {reason}")
        return value


@dataclass(frozen=True)
class PtqJob:
    """What a post-training quantizer gets: float weights and bits per layer, and (for methods that weigh
    output error) the input Gram matrices of the layers, computed only when asked for."""

    weights: dict[str, np.ndarray]
    bits: dict[str, int]
    grams: Callable[[], dict[str, np.ndarray]]


def _per_layer(fn: Callable[..., WeightQuant]) -> Callable[[PtqJob, Mapping[str, Any]], dict[str, WeightQuant]]:
    return lambda job, opts: {name: fn(w, job.bits[name], **opts) for name, w in job.weights.items()}


def _multipoint(job: PtqJob, opts: Mapping[str, Any]) -> dict[str, WeightQuant]:
    return multipoint.quantize_layers(job.weights, job.bits, job.grams(), **opts)


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else f"must be >= 0, got {value}"


def _positive(value: int) -> str | None:
    return None if value >= 1 else f"must be >= 1, got {value}"


def _flag(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(text)
    return text.lower() in ("true", "1", "yes")


def _bits(value: int) -> str | None:
    return None if 1 <= value <= 8 else f"must be 1..8, got {value}"


@dataclass(frozen=True)
class Method:
    name: str
    kinds: tuple[WeightKind, ...]  # the weight kinds it yields (which decide the kernel families)
    ptq: Callable[[PtqJob, Mapping[str, Any]], dict[str, WeightQuant]]
    trains: bool = False  # has a QAT trainer (qat.make_trainer builds it by this name)
    options: tuple[Option, ...] = ()  # the post-training quantizer's keyword arguments
    min_bits: int = 1
    qat_options: tuple[Option, ...] = ()  # the trainer's keyword arguments (qat.py)

    def check(self, given: Mapping[str, Any]) -> None:
        """Every name an option of the quantizer or the trainer, every value valid (before any work)."""
        known = {o.name: o for o in (*self.qat_options, *self.options)}
        unknown = sorted(set(given) - set(known))
        if unknown:
            have = ", ".join(dict.fromkeys(o.name for o in (*self.options, *self.qat_options))) or "none"
            raise UserError(f"method '{self.name}' has no option {', '.join(unknown)} (its options: {have})")
        for name, value in given.items():
            known[name].validate(self.name, value)

    def resolve(self, given: Mapping[str, Any], training: bool = False) -> dict[str, Any]:
        """The given options of the post-training quantizer (or, `training`, of the trainer), parsed and
        checked; the functions' own defaults apply to the rest. One the other stage only takes is refused
        (it would be ignored)."""
        self.check(given)
        known = {o.name: o for o in (self.qat_options if training else self.options)}
        elsewhere = sorted(set(given) - set(known))
        if elsewhere:
            stage = "training (post-training only)" if training else "post-training quantizer (--train only)"
            raise UserError(f"--method-opt {', '.join(elsewhere)}: not used by {self.name}'s {stage}")
        return {name: known[name].validate(self.name, value) for name, value in given.items()}


_PER_CHANNEL = Option("per_channel", True, "one grid per output channel (false: one per layer)", _flag)
_UNIFORM_BITS = Option("uniform_bits", 8, "layers of this many bits or more use the uniform grid", int, check=_bits)
_N1 = Option("n1", "auto", "largest exponent: least squares at 2 bits (auto), the paper's rule, or lsq",
             choices=inq.N1_RULES)

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("uniform", (WeightKind.UNIFORM,), _per_layer(uniform.quantize_weight), trains=True,
           options=(_PER_CHANNEL, Option("clip", "mse", "clipping range: least squared error or max|W|",
                                         choices=uniform.CLIPS)),
           qat_options=(Option("refresh", 10, "steps between grid refreshes", int, check=_positive),)),
    Method("uniq", (WeightKind.CODEBOOK,), _per_layer(uniq.quantize_weight), trains=True,
           options=(Option("fit", "auto", "CDF fit of the weights", choices=uniq.FITS),
                    Option("per_channel", True, "one fit and table per output channel (false: one per layer)", _flag))),
    Method("inq", (WeightKind.POW2, WeightKind.UNIFORM), _per_layer(inq.quantize_weight), trains=True, min_bits=2,
           options=(_N1, _UNIFORM_BITS),
           qat_options=(Option("portion_steps", None, "steps per portion of the schedule", int, check=_positive), _N1,
                        _UNIFORM_BITS)),
    Method("balanced", (WeightKind.UNIFORM,), _per_layer(balanced.quantize_weight), trains=True,
           options=(Option("approx", "exact", "edges from medians (exact) or means", choices=balanced.APPROX),
                    _PER_CHANNEL, Option("offset", True, "the offset term of the balanced grid", _flag),
                    Option("zero_points", "auto", "offsets exact at 2 bits (auto; the dequant kernel runs them) "
                           "or multiples of 1/2 at every width (half; the bit-serial and int8 kernels)",
                           choices=balanced.ZERO_POINTS),
                    _UNIFORM_BITS)),
    Method("multipoint", (WeightKind.MULTIPOINT,), _multipoint,
           options=(Option("budget", 0.1, "extra weight rows as a fraction of all output channels", float,
                           check=_non_negative),
                    Option("max_points", 4, "most points per output channel", int, check=_positive)),
           min_bits=2),
    Method("qnet", (WeightKind.UNIFORM, WeightKind.POW2), _per_layer(qnet.quantize_weight), trains=True,
           options=(Option("levels", "paper", "level set: the paper's, or uniform integers", choices=qnet.LEVEL_SETS),
                    Option("init", "lloyd", "level initialisation", choices=qnet.INITS), _UNIFORM_BITS),
           qat_options=(Option("t_start", qnet.T_START, "first temperature", float, check=_non_negative),
                        Option("t_end", qnet.T_END, "last temperature", float, check=_non_negative),
                        Option("quant_lr", 1.0, "quantizer lr as a multiple of the network's", float,
                               check=_non_negative),
                        Option("grad", "released", "sigmoid gradient form", choices=qnet.GRADS),
                        Option("init", "lloyd", "level initialisation", choices=qnet.INITS))),
)}
QAT_METHODS = tuple(name for name, m in METHODS.items() if m.trains)


def method_named(name: str) -> Method:
    method = METHODS.get(name)
    if method is None:
        raise UserError(f"unknown method '{name}'; known: {', '.join(METHODS)}")
    return method


def parse_method_opts(pairs: list[str]) -> dict[str, str]:
    """`--method-opt KEY=VALUE` (repeatable) -> {KEY: VALUE}; values are parsed by the method's Option."""
    opts = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--method-opt expects KEY=VALUE, got '{pair}'")
        opts[key.strip()] = value.strip()
    return opts
