"""Targets are data: one JSON file per target in the top-level `targets/` folder, plus this small adapter."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tvm.target import Target

from .errors import UserError
from .linker import Linker, find_linker
from .resources import shipped_dir

TARGETS_DIR = shipped_dir("targets")


@dataclass(frozen=True)
class TargetSpec:
    """A compilation target: the TVM target dict, how to link, and whether it runs here or over RPC."""

    name: str
    description: str
    tvm_config: dict
    cross_compiler: str | None
    runs: str  # "local" or "rpc"
    default_rpc: str | None = None
    adapter: str = "cpu"  # the target kind's adapter (tvmquant/adapters/)
    device_hint: str | None = None  # how to bring a device up, for "not run" messages

    @property
    def tvm_target(self) -> Target:
        """The TVM target, as the target kind's adapter completes the file (host, machine defaults)."""
        from .adapters import for_target

        return for_target(self).tvm_target(self)

    def linker(self) -> Linker | None:
        """How artifacts for a cross target are linked (None: TVM's host default)."""
        if not self.cross_compiler:
            return None
        return find_linker(self.cross_compiler, self.tvm_config.get("mtriple", ""), self.name)

    def export(self, executable, path: Path) -> str:
        """Write a shared library (weights embedded) for this LLVM target (the CPU adapter's export); atomically, so no half-written file.
        Returns what linked it."""
        linker = self.linker()
        fcompile = linker.fcompile() if linker else None
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial.so")
        try:
            executable.export_library(str(tmp), fcompile=fcompile)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return linker.description if linker else "the host compiler (TVM default)"


def known_targets() -> list[str]:
    """The target descriptions in targets/ (files with a "tvm" section; VTA hardware configs sit beside them)."""
    return sorted(p.stem for p in TARGETS_DIR.glob("*.json") if '"tvm"' in p.read_text())


def load_target(name: str) -> TargetSpec:
    """By name (a file in targets/) or by path to a JSON file of the same form."""
    path = Path(name) if name.endswith(".json") else TARGETS_DIR / f"{name}.json"
    if not path.is_file():
        raise UserError(f"unknown target '{name}'; known targets: {', '.join(known_targets())}")
    try:
        data = json.loads(path.read_text())
        return TargetSpec(
            name=path.stem,
            description=data.get("description", ""),
            tvm_config=data["tvm"],
            cross_compiler=data.get("cross_compiler"),
            runs=data.get("runs", "local"),
            default_rpc=data.get("default_rpc"),
            adapter=data.get("adapter", "cpu"),
            device_hint=data.get("device_hint"),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"target file {path} is malformed: {exc}") from exc
