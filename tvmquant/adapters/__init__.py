"""Target adapters by kind; a target file names its adapter (`"adapter": "cpu"`, the default)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UserError
from .base import TargetAdapter
from .cpu import CpuAdapter
from .cuda import CudaAdapter
from .vta import VtaAdapter

if TYPE_CHECKING:
    from ..target import TargetSpec

ADAPTERS: dict[str, TargetAdapter] = {"cpu": CpuAdapter(), "cuda": CudaAdapter(), "vta": VtaAdapter()}


def for_target(spec: TargetSpec) -> TargetAdapter:
    """The adapter the target file names."""
    adapter = ADAPTERS.get(spec.adapter)
    if adapter is None:
        raise UserError(f"target '{spec.name}' names adapter '{spec.adapter}'; known: {', '.join(ADAPTERS)}")
    return adapter

