"""A per-layer quantization plan (method, weight and activation bits, or float32) and its JSON file.

The file is what `compile --plan FILE` writes and `--plan-in FILE` reads back after a user edited it, so it
is read as untrusted input: every field is checked and the first problem is a one-line UserError.

    {"tvmquant_plan": 1, "model": "digits_cnn",
     "layers": {"conv1": {"method": "uniform", "wbits": 8, "abits": 8, "family": "int8", "bytes": 768, ...},
                "fc2": {"method": "fp32"}}}

`method`, `wbits` and `abits` decide the layer; `family` and `bytes` are what the planner predicted (the kernel
rule derives the family from them, so an edited plan needs neither); the other keys are the planner's
measurements, kept for the reader.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UserError
from .names import KERNELS, METHODS

VERSION = 1
FLOAT = "fp32"  # a layer kept in float32
MAX_FILE_BYTES = 1 << 20
NEEDS_TWO_BITS = ("inq", "multipoint")
MEASURED = ("error", "flips")  # planner measurements a file may carry (informational)


@dataclass(frozen=True)
class LayerChoice:
    """One layer's decision; `family`/`bytes` are the planner's prediction, `error`/`flips` its measurement
    of this layer alone (output error and top-1 flips against fp32 on calibration data)."""

    method: str
    wbits: int | None = None
    abits: int | None = None
    family: str | None = None
    bytes: int | None = None
    error: float | None = None
    flips: float | None = None

    @property
    def is_float(self) -> bool:
        return self.method == FLOAT

    def label(self) -> str:
        return "float32" if self.is_float else f"{self.method} W{self.wbits}A{self.abits}"


@dataclass
class Plan:
    model: str
    layers: dict[str, LayerChoice]
    budget_bytes: int | None = None  # the budget it was solved for (None: loaded or hand-written)
    fp32_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def predicted_bytes(self) -> int | None:
        sizes = [c.bytes for c in self.layers.values()]
        return None if any(s is None for s in sizes) else sum(sizes)


def to_json(plan: Plan) -> str:
    layers = {name: {k: v for k, v in asdict(c).items() if v is not None} for name, c in plan.layers.items()}
    doc = {"tvmquant_plan": VERSION, "model": plan.model, "budget_bytes": plan.budget_bytes,
           "fp32_bytes": plan.fp32_bytes, "layers": layers}
    return json.dumps(doc, indent=2) + "\n"


def save(plan: Plan, path: Path) -> None:
    path.write_text(to_json(plan))


def load(path: str | Path, layer_names: list[str]) -> Plan:
    """Read and check a plan file against the model's quantizable layers (in model order)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"plan file not found: {path}")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise UserError(f"plan file {path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"plan file {path} is not JSON: {exc}") from None
    return parse(doc, layer_names, str(path))


def parse(doc: object, layer_names: list[str], where: str = "plan") -> Plan:
    """A Plan from a decoded JSON document, every field checked."""
    if not isinstance(doc, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    unknown = set(doc) - {"tvmquant_plan", "model", "budget_bytes", "fp32_bytes", "layers"}
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    if doc.get("tvmquant_plan") != VERSION:
        raise UserError(f"{where}: 'tvmquant_plan' must be {VERSION} (a file written by compile --plan)")
    model = doc.get("model", "")
    if not isinstance(model, str):
        raise UserError(f"{where}: 'model' must be a string")
    for key in ("budget_bytes", "fp32_bytes"):
        if doc.get(key) is not None:
            _count(doc[key], f"{where}: '{key}'")
    layers = doc.get("layers")
    if not isinstance(layers, dict):
        raise UserError(f"{where}: 'layers' must be an object mapping layer names to choices")
    missing = [n for n in layer_names if n not in layers]
    extra = [n for n in layers if n not in layer_names]
    if extra:
        raise UserError(f"{where}: layer(s) {', '.join(map(str, extra))} not in the model (its layers: {', '.join(layer_names)})")
    if missing:
        raise UserError(f"{where}: no choice for layer(s) {', '.join(missing)}")
    choices = {name: _choice(layers[name], f"{where}: layer '{name}'") for name in layer_names}
    return Plan(model, choices, doc.get("budget_bytes"), doc.get("fp32_bytes"))


def _choice(entry: object, where: str) -> LayerChoice:
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected an object like {{\"method\": \"uniform\", \"wbits\": 4, \"abits\": 8}}")
    unknown = set(entry) - {"method", "wbits", "abits", "family", "bytes", *MEASURED}
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    method = entry.get("method")
    measured = {k: _real(entry[k], f"{where}: '{k}'") for k in MEASURED if entry.get(k) is not None}
    if method == FLOAT:
        if any(entry.get(k) is not None for k in ("wbits", "abits", "family")):
            raise UserError(f"{where}: a float32 layer has no wbits/abits/family")
        return LayerChoice(FLOAT, bytes=_optional(entry, "bytes", where), **measured)
    if method not in METHODS:
        raise UserError(f"{where}: method must be one of {', '.join((*METHODS, FLOAT))}, got {method!r}")
    wbits, abits = (_bits(entry.get(k), f"{where}: '{k}'") for k in ("wbits", "abits"))
    if method in NEEDS_TWO_BITS and wbits < 2:
        raise UserError(f"{where}: method '{method}' needs at least 2 weight bits")
    family = entry.get("family")
    if family is not None and family not in KERNELS[1:]:
        raise UserError(f"{where}: family must be one of {', '.join(KERNELS[1:])}, got {family!r}")
    return LayerChoice(method, wbits, abits, family, _optional(entry, "bytes", where), **measured)


def _bits(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8:
        raise UserError(f"{where} must be an integer from 1 to 8, got {value!r}")
    return value


def _count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{where} must be a non-negative integer, got {value!r}")
    return value


def _optional(entry: dict, key: str, where: str) -> int | None:
    return None if entry.get(key) is None else _count(entry[key], f"{where}: '{key}'")


def _real(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UserError(f"{where} must be a finite non-negative number, got {value!r}")
    return float(value)
