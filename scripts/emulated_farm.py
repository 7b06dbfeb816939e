"""A small device farm of emulated aarch64 boards: one RPC tracker and N servers under one key, on 127.0.0.1.

    python scripts/emulated_farm.py --servers 2 --key arm64 -- python -m tvmquant tune --target arm_cpu \\
        --rpc-tracker 127.0.0.1:9190 --rpc-key arm64 --trials 4

starts them, runs the command, and stops everything it started (also on failure). Each server is
scripts/arm64-device.sh with its own TVMQUANT_ARM_DIR (the script keeps one pid file per folder), sharing the
sysroot and aarch64 site of the default device folder, which must be set up. The tests use `farm()` directly.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "arm64-device.sh"
BASE_DIR = Path(os.environ.get("TVMQUANT_ARM_DIR", Path.home() / ".cache" / "tvmquant" / "arm64"))
SHARED = ("sysroot", "site", "bin")


def is_set_up() -> bool:
    status = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True, timeout=60)
    return "setup: done" in status.stdout


def _instance_dir(name: str) -> Path:
    path = BASE_DIR.parent / f"{BASE_DIR.name}-{name}"
    path.mkdir(parents=True, exist_ok=True)
    for part in SHARED:
        link = path / part
        if not link.is_symlink():
            link.symlink_to(BASE_DIR / part)
    return path


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


class Server:
    """One emulated server: `scripts/arm64-device.sh start` in its own device folder."""

    def __init__(self, name: str, port: int, tracker: str, key: str):
        self.env = {**os.environ, "TVMQUANT_ARM_DIR": str(_instance_dir(name))}
        self.args = ["--port", str(port), "--tracker", tracker, "--key", key]
        self.port = port

    def _script(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def start(self) -> None:
        proc = self._script("start", *self.args)
        if proc.returncode:
            raise RuntimeError(f"server on port {self.port} did not start: {proc.stderr.strip()[-500:]}")

    def stop(self) -> None:
        self._script("stop", timeout=60)


@contextmanager
def farm(servers: int, key: str, tracker_port: int = 9190, port: int = 9100, name: str = "farm") -> Iterator[list[Server]]:
    """Tracker on 127.0.0.1:tracker_port and `servers` servers from `port` upwards (2 ports each)."""
    tracker = subprocess.Popen(
        [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(tracker_port),
         "--port-end", str(tracker_port + 1)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    started: list[Server] = []
    try:
        _wait_port(tracker_port, 30)
        for i in range(servers):
            server = Server(f"{name}{i}", port + 2 * i, f"127.0.0.1:{tracker_port}", key)
            started.append(server)
            server.start()
        yield started
    finally:
        for server in started:
            server.stop()
        os.killpg(tracker.pid, signal.SIGTERM)
        tracker.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--key", default="arm64")
    parser.add_argument("--tracker-port", type=int, default=9190)
    parser.add_argument("--port", type=int, default=9100, help="first server port (each server takes two)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND to run while the farm is up")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give a command after --")
    with farm(args.servers, args.key, args.tracker_port, args.port):
        print(f"farm up: tracker 127.0.0.1:{args.tracker_port}, {args.servers} server(s) under key '{args.key}'", flush=True)
        return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
