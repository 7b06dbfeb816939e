"""Which program links a cross-compiled artifact: the target's system cross compiler when it is installed,
otherwise the zig toolchain from the pip-installed `ziglang` wheel, so that a fresh machine needs no system
package. TVM's LLVM already emits the object files; linking them into a `.so` is all that is asked here.

`TVMQUANT_LINKER=system|zig` forces one of the two (e.g. to test the pip-only path where gcc is installed).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from .errors import UserError

CHOICES = ("auto", "system", "zig")


@dataclass(frozen=True)
class Linker:
    """A link command for shared libraries; `command + [-o OUT, *objects]` makes one."""

    description: str  # what the compile summary shows
    command: tuple[str, ...]

    def fcompile(self):
        """An `export_library(fcompile=...)` callable (TVM's string form takes one executable, not a command)."""
        return link_function(list(self.command))


def link_function(command: list[str]):
    """A picklable-by-value fcompile for `command`; MetaSchedule's workers use it too (see _ms_workers)."""

    def fcompile(output: str, objects: list[str], options: list[str] | None = None) -> None:
        cmd = [*command, "-o", output, *objects, *(options or [])]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"linking failed ({' '.join(cmd)}):\n{proc.stdout}")

    fcompile.output_format = "so"
    return fcompile


def find_linker(cross_compiler: str, triple: str, target_name: str) -> Linker:
    """The linker for `triple`: `cross_compiler` (e.g. aarch64-linux-gnu-gcc) if on PATH, else zig."""
    choice = os.environ.get("TVMQUANT_LINKER", "auto")
    if choice not in CHOICES:
        raise UserError(f"TVMQUANT_LINKER must be one of {', '.join(CHOICES)}, got '{choice}'")
    system = shutil.which(cross_compiler)
    if system and choice != "zig":
        return Linker(f"{cross_compiler} (system)", (system, "-shared", "-fPIC"))
    if choice == "system":
        raise UserError(f"target '{target_name}' asks for the system cross compiler '{cross_compiler}', which is "
                        "not installed (Debian: apt-get install gcc-aarch64-linux-gnu)")
    if importlib.util.find_spec("ziglang") is None:
        raise UserError(
            f"target '{target_name}' needs a linker for {triple}: install the pinned 'ziglang' wheel "
            f"(pip install ziglang) or the cross compiler '{cross_compiler}' (Debian: gcc-aarch64-linux-gnu)"
        )
    return Linker(f"zig cc -target {triple} (pip ziglang)",
                  (sys.executable, "-m", "ziglang", "cc", "-target", triple, "-shared", "-fPIC"))
