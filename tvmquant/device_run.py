"""The one way an artifact is run and timed on its device, for `compile` (its evaluation), `run` and `deploy`.

Where it runs comes from a `DeviceAddress` (here, a direct RPC server, or any server under a tracker key);
what device it is comes from the target's adapter. Nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .adapters import for_target
from .batching import run_batched
from .errors import UserError
from .rpc import DeviceModule, connect, device_errors, is_listening, request
from .target import TargetSpec


@dataclass(frozen=True)
class DeviceAddress:
    """Nothing: this process; `rpc`: a TVM RPC server; `tracker` + `key`: any free server under the key."""

    rpc: str | None = None
    tracker: str | None = None
    key: str | None = None

    @property
    def local(self) -> bool:
        return not (self.rpc or self.tracker)

    def describe(self, spec: TargetSpec) -> str:
        if self.tracker:
            return f"{spec.name} device '{self.key}' via tracker {self.tracker}"
        return f"{spec.name} device at {self.rpc}" if self.rpc else f"{spec.name}, this machine"

    def unreachable(self) -> str | None:
        """Why a direct device cannot be reached (a cheap TCP check), or None."""
        if self.rpc and not is_listening(self.rpc):
            return f"no device at {self.rpc}"
        return None

    def session(self):
        if self.tracker:
            if not self.key:
                raise UserError("--rpc-tracker needs --rpc-key")
            return request(self.tracker, self.key)
        return connect(self.rpc) if self.rpc else None


@dataclass
class DeviceRun:
    outputs: np.ndarray
    latency_ms: float  # median over repeats of the mean of 10 calls, timed on the device
    where: str
    profile: list = field(default_factory=list)  # profile.ProfileRow per function, when asked for (local only)


def open_module(spec: TargetSpec, artifact: Path, address: DeviceAddress) -> DeviceModule:
    """The artifact loaded on the device `address` reaches (the adapter says which device that is)."""
    session = address.session()
    device = for_target(spec).device(session)
    return DeviceModule.local(artifact, device) if session is None else DeviceModule.remote(session, artifact, device)


def run_on_device(
    spec: TargetSpec, artifact: Path, inputs: np.ndarray, batch: int, address: DeviceAddress, repeat: int = 5,
    profile: bool = False,
) -> DeviceRun:
    """Load the artifact on the device, run `inputs` in fixed batches, time one batch (`profile`: also every
    function, through the VM's instrument hook in this process); one-line UserError on failure."""
    where = address.describe(spec)
    with device_errors(where):
        module = open_module(spec, artifact, address)
        outputs = run_batched(module, inputs, batch, f"running on {where}")
        latency = module.latency_ms(inputs[:batch], repeat=repeat)
        rows = []
        if profile:
            from .profile import profile as profile_calls

            rows = profile_calls(module, inputs[:batch], repeat)
    return DeviceRun(outputs, latency, where, rows)
