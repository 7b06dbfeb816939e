"""What `compile` reports about its artifact: fp32, quantized reference and the compiled module itself on the
evaluation data (run through device_run, the path `run` and `deploy` use too). Computes; report.py prints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .adapters import for_target
from .batching import run_batched
from .device_run import DeviceAddress, run_on_device
from .errors import UserError

if TYPE_CHECKING:
    from .compile import CompileResult


@dataclass
class Evaluation:
    """Outputs of fp32, quantized reference and compiled module on the evaluation data."""

    fp32: np.ndarray
    reference: np.ndarray
    compiled: np.ndarray | None
    where: str  # where the compiled module ran, or why it did not
    latency_ms: float | None = None


def evaluate(result: CompileResult, rpc_address: str | None) -> Evaluation:
    """Run the exported artifact itself (device_run.run_on_device): here for local targets, on the RPC device
    at `rpc_address` if one is reachable; a device that is not is a reason, not an error."""
    src, target = result.source, result.target
    fp32 = run_batched(src.fp32, src.eval_x, src.batch_size)
    adapter = for_target(target)
    remote = adapter.remote(target, bool(rpc_address))
    address = DeviceAddress(rpc=rpc_address) if remote else DeviceAddress()
    if remote:
        reason = "no --rpc device given" if address.local else address.unreachable()
    else:
        reason = adapter.local_problem(target)
    if reason is None:
        try:
            run = run_on_device(target, result.artifact, src.eval_x, src.batch_size, address)
            return Evaluation(fp32, result.reference_outputs, run.outputs, run.where, run.latency_ms)
        except UserError as exc:
            reason = str(exc)
    if target.device_hint:
        reason += f" ({target.device_hint})"
    return Evaluation(fp32, result.reference_outputs, None, f"not run: {reason}")
