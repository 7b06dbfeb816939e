"""The VTA adapter: layers VTA can run become instruction streams (vta/), the rest is a CPU host library.

The host part is built exactly as for the CPU (this adapter is the CPU adapter for everything the pipeline
asks), with VTA's layers offloaded first (vta/pipeline.py hands `pipeline.build` an OffloadToVta rewrite).
VTA's commands differ from the standard ones as a whole: compile writes the VTA programs beside the host
library and checks them on the functional simulator, `run` replays an artifact on the simulator, `tune`
searches tilings on simulated cycles, and `deploy` goes through the board's pynq package, not RPC
(vta/commands.py); `command` hands them to the command line.
"""

from __future__ import annotations

from collections.abc import Callable

from .cpu import CpuAdapter


class VtaAdapter(CpuAdapter):
    def command(self, name: str) -> Callable[..., int] | None:
        from ..vta import commands

        return {"compile": commands.compile_command, "run": commands.run_command, "tune": commands.tune_command,
                "deploy": commands.deploy_command}[name]
