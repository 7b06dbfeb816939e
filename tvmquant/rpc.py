"""Running a compiled artifact: in this process, or on a device over TVM RPC (upload, load, run, time).

The same Relax VM calls (set_input / invoke_stateful / get_outputs) work on both, so callers never branch.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tvm
from tvm import relax, rpc

from .errors import UserError


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"expected HOST:PORT, got '{text}'")
    return host, int(port)


def is_listening(address: str, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections there (cheap check before a slower RPC handshake)."""
    try:
        with socket.create_connection(parse_address(address), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def device_errors(where: str) -> Iterator[None]:
    """Turn a device or connection failure (server killed, network gone) into one readable UserError."""
    try:
        yield
    except UserError:
        raise
    except (RuntimeError, OSError) as exc:  # TVM's errors (tvm.error.*, tvm-ffi) are RuntimeErrors
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        raise UserError(f"{where} failed: {lines[-1] if lines else type(exc).__name__}") from exc


def connect(address: str, timeout: float = 10.0) -> rpc.RPCSession:
    """A direct RPC session, or a one-line UserError saying how to get a device up."""
    host, port = parse_address(address)
    if not is_listening(address, timeout=min(timeout, 2.0)):
        raise UserError(
            f"no TVM RPC server at {address} (for the emulated ARM device: scripts/arm64-device.sh start)"
        )
    try:
        return rpc.connect(host, port, session_timeout=0)
    except Exception as exc:  # tvm raises RuntimeError subclasses (tvm.error.RPCError, ...) for handshake failures
        raise UserError(f"RPC server at {address} refused the session: {str(exc).splitlines()[0]}") from exc


TRACKER_TIMEOUT = 10.0  # seconds: how long `tune`/`deploy` wait for a tracker to answer before giving up


def _within(timeout: float, what: str, fn):
    """fn() in a thread, or a UserError after `timeout` s (TVM's tracker client retries for 60 s by itself)."""
    result: list = []

    def run() -> None:
        try:
            result.append((True, fn()))
        except Exception as exc:  # reported below, in the caller's thread
            result.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        raise UserError(f"{what}: no answer within {timeout:.0f} s")
    ok, value = result[0]
    if not ok:
        raise UserError(f"{what}: {str(value).strip().splitlines()[-1] if str(value).strip() else type(value).__name__}")
    return value


def tracker_servers(tracker: str, key: str, timeout: float = TRACKER_TIMEOUT) -> int:
    """How many servers are registered under `key`; a one-line UserError if the tracker is unreachable or has
    none (so a run fails in seconds instead of waiting for a device forever)."""
    host, port = parse_address(tracker)
    if not is_listening(tracker, timeout=min(timeout, 2.0)):
        raise UserError(f"no RPC tracker at {tracker} (start one: python -m tvm.exec.rpc_tracker --host 127.0.0.1 --port {port})")
    summary = _within(timeout, f"RPC tracker at {tracker}", lambda: rpc.connect_tracker(host, port).summary())
    servers = sum(1 for info in summary.get("server_info", []) if info.get("key") == f"server:{key}")
    if not servers:
        raise UserError(f"no RPC server registered under key '{key}' at tracker {tracker}")
    return servers


def request(tracker: str, key: str, timeout: float = TRACKER_TIMEOUT) -> rpc.RPCSession:
    """A session on one of the servers registered under `key` (the tracker picks a free one)."""
    tracker_servers(tracker, key, timeout)
    host, port = parse_address(tracker)
    return _within(timeout, f"device '{key}' via tracker {tracker}",
                   lambda: rpc.connect_tracker(host, port).request(key, session_timeout=0))


class DeviceModule:
    """A compiled model loaded on a device (here or remote; the target's adapter says which device), called on
    fixed-shape numpy batches."""

    def __init__(self, module: tvm.runtime.Module, device: tvm.runtime.Device):
        self.device = device
        self.vm = relax.VirtualMachine(module, device)

    @classmethod
    def local(cls, artifact: str | Path | relax.VMExecutable, device: tvm.runtime.Device | None = None) -> DeviceModule:
        """`device`: where its kernels run here (the target adapter's; default tvm.cpu())."""
        module = artifact if isinstance(artifact, relax.VMExecutable) else tvm.runtime.load_module(str(artifact))
        return cls(module, tvm.cpu() if device is None else device)

    @classmethod
    def remote(cls, session: rpc.RPCSession, artifact: str | Path, device: tvm.runtime.Device) -> DeviceModule:
        artifact = Path(artifact)
        session.upload(str(artifact))
        try:
            module = session.load_module(artifact.name)
        except Exception as exc:
            raise UserError(
                f"the device could not load {artifact.name} (built for another target?): {str(exc).splitlines()[0]}"
            ) from exc
        return cls(module, device)

    def _set(self, x: np.ndarray) -> None:
        self.vm.set_input("main", tvm.runtime.tensor(np.ascontiguousarray(x, np.float32), self.device))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self._set(x)
        self.vm.invoke_stateful("main")
        return self.vm.get_outputs("main").numpy()

    def latency_ms(self, x: np.ndarray, number: int = 10, repeat: int = 5) -> float:
        """Median over `repeat` runs of the mean of `number` calls, timed on the device itself."""
        self._set(x)
        timer = self.vm.time_evaluator("invoke_stateful", self.device, number=number, repeat=repeat)
        return float(np.median(timer("main").results)) * 1e3
