"""`families.json` in a tuning folder: how fast each exact kernel family ran each layer, as `tune` measured it,
so that `compile --tuning-log DIR` can give every layer the fastest family (registry.candidates).

MetaSchedule's database holds the run times of tuned schedules, but only for tunable kernels and only of the
trials; the default schedule's time (what compile builds without a record, and all a non-tunable family such
as int8 has) is kept here, per kernel workload, as the better of the default schedule and the best record.
A kernel workload is the family's unscheduled PrimFunc for the layer (its structural hash: the same key
compile computes from the kernel it would build), so records of another model or bit width never match.

A tuning folder may come from anyone: the file is read as untrusted input, every field checked, and anything
wrong is one line naming the file and the entry (UserError), never a traceback and never half a file used.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import tvm_ffi
from tvm import tirx

from . import safe_fs
from .errors import UserError
from .kernels.family import LAYER_ATTR
from .kernels.registry import FAMILIES

FILE = "families.json"
FORMAT = "tvmquant family times"
VERSION = 1
MAX_BYTES = 8 << 20  # far above any model's worth of entries; a larger file is refused, not parsed
MAX_MS = 1e6
_WORKLOAD = re.compile(r"^[0-9a-f]{1,16}$")
_ENTRY_KEYS = {"workload", "layer", "family", "ms"}


@dataclass(frozen=True)
class KernelTime:
    """One measured kernel: which layer and family (for people), and its best time."""

    workload: str
    layer: str
    family: str
    ms: float


def workload_key(prim: tirx.PrimFunc) -> str:
    """The key of a kernel's unscheduled PrimFunc, with the attributes the Relax pass adds taken off (the pass's
    module and the family's compute then give the same key)."""
    for attr in ("global_symbol", LAYER_ATTR, "op_pattern"):
        if prim.attrs is not None and attr in prim.attrs:
            prim = prim.without_attr(attr)
    return f"{tvm_ffi.structural_hash(prim) & 0xFFFFFFFFFFFFFFFF:x}"


def read(log_dir: Path) -> dict[str, KernelTime]:
    """The folder's measured kernels by workload key ({} if it has no such file); UserError if it is bad."""
    path = log_dir / FILE
    safe_fs.refuse_symlink(path)
    if path.is_file() and path.stat().st_size > MAX_BYTES:
        raise UserError(f"{path}: {path.stat().st_size} bytes, more than {MAX_BYTES} (not a file tune writes)")
    text = safe_fs.read_text(path)
    return {} if text is None else parse(text, path)


def parse(text: str, path: Path) -> dict[str, KernelTime]:
    try:
        data = json.loads(text)
    except ValueError:
        raise UserError(f"{path}: not valid JSON (cut short, or not written by tvmquant tune)") from None
    if not (isinstance(data, dict) and data.get("format") == FORMAT and set(data) == {"format", "version", "kernels"}):
        raise UserError(f"{path}: not a family-times file (expected the keys format, version, kernels)")
    if data["version"] != VERSION:
        raise UserError(f"{path}: version {data['version']!r}; this tvmquant reads version {VERSION}")
    if not isinstance(data["kernels"], list):
        raise UserError(f"{path}: 'kernels' is not a list")
    times = {}
    for number, entry in enumerate(data["kernels"], start=1):
        kernel = _entry(entry)
        if isinstance(kernel, str):
            raise UserError(f"{path}: kernel entry {number}: {kernel}")
        times[kernel.workload] = kernel
    return times


def _entry(entry: object) -> KernelTime | str:
    """The entry, or what is wrong with it."""
    if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
        return f"expected an object with exactly the keys {', '.join(sorted(_ENTRY_KEYS))}"
    workload, layer, family, ms = (entry[k] for k in ("workload", "layer", "family", "ms"))
    if not (isinstance(workload, str) and _WORKLOAD.match(workload)):
        return "workload is not a hexadecimal key of at most 16 digits"
    if not (isinstance(layer, str) and 0 < len(layer) <= 256 and layer.isprintable()):
        return "layer is not a printable name of 1-256 characters"
    if family not in FAMILIES:
        return f"family {str(family)[:40]!r} is not one of {', '.join(FAMILIES)}"
    if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) or not 0 < ms < MAX_MS:
        return f"ms is not a time in milliseconds (a number in (0, {MAX_MS:g}))"
    return KernelTime(workload, layer, family, float(ms))


def write(log_dir: Path, measured: list[KernelTime]) -> None:
    """Merge `measured` into the folder's file (a new time for a workload replaces the old); the caller holds
    the folder's lock (database.locked)."""
    times = {**read(log_dir), **{k.workload: k for k in measured}}
    kernels = [vars(k) for k in sorted(times.values(), key=lambda k: (k.layer, k.family, k.workload))]
    text = json.dumps({"format": FORMAT, "version": VERSION, "kernels": kernels}, indent=1)
    safe_fs.write_atomic(log_dir / FILE, text + "\n")


def merged(log_dirs: list[Path]) -> dict[str, float]:
    """Workload key -> best measured ms over several folders (compile's view)."""
    best: dict[str, float] = {}
    for log_dir in log_dirs:
        for key, kernel in read(log_dir).items():
            best[key] = min(kernel.ms, best.get(key, math.inf))
    return best


def describe(chosen: str, times: Mapping[str, float]) -> str:
    """The summary's reason: 'measured 0.21 ms vs bitserial 0.30 ms'."""
    others = ", ".join(f"{name} {ms:.3g} ms" for name, ms in sorted(times.items(), key=lambda kv: kv[1]) if name != chosen)
    return f"measured {times[chosen]:.3g} ms vs {others}"
