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


@dataclass(frozen=True)
class Method:
    name: str
    kinds: tuple[WeightKind, ...]  # the weight kinds it yields (which decide the kernel families)
    ptq: Callable[[PtqJob, Mapping[str, Any]], dict[str, WeightQuant]]
    trains: bool = False  # has a QAT trainer (qat.make_trainer builds it by this name)
    options: tuple[Option, ...] = ()
    min_bits: int = 1
    qat_options: tuple[str, ...] = ()  # options the trainer honours too (the others shape PTQ only)

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overridden by `given`, every value checked; unknown names are a UserError."""
        known = {o.name: o for o in self.options}
        unknown = sorted(set(given) - set(known))
        if unknown:
            have = ", ".join(known) or "none"
            raise UserError(f"method '{self.name}' has no option {', '.join(unknown)} (its options: {have})")
        return {name: option.validate(self.name, given.get(name, option.default)) for name, option in known.items()}


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("uniform", (WeightKind.UNIFORM,), _per_layer(uniform.quantize_weight)),
    Method("uniq", (WeightKind.CODEBOOK,), _per_layer(uniq.quantize_weight), trains=True,
           options=(Option("fit", "gaussian", "CDF fit of the weights", choices=uniq.FITS),)),
    Method("inq", (WeightKind.POW2,), _per_layer(inq.quantize_weight), trains=True, min_bits=2),
    Method("balanced", (WeightKind.UNIFORM,), _per_layer(balanced.quantize_weight), trains=True,
           options=(Option("approx", "exact", "edges from medians (exact) or means", choices=balanced.APPROX),)),
    Method("multipoint", (WeightKind.MULTIPOINT,), _multipoint,
           options=(Option("budget", 0.1, "extra weight rows as a fraction of all output channels", float,
                           check=_non_negative),
                    Option("max_points", 4, "most points per output channel", int, check=_positive)),
           min_bits=2),
    Method("qnet", (WeightKind.UNIFORM, WeightKind.POW2), _per_layer(qnet.quantize_weight), trains=True,
           options=(Option("levels", "paper", "level set: the paper's, or uniform integers", choices=qnet.LEVEL_SETS),)),
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
