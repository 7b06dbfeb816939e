"""The pip CUDA 13 toolkit (the `cuda` extra): NVRTC, ptxas and nvcc from wheels, no system CUDA needed.

TVM finds NVRTC through CUDA_PATH and the CCCL headers only in a toolkit's own layout, so `configure()` points
both at the wheels (site-packages/nvidia/cu13) once per process. Kernels are compiled exactly: TVM's NVRTC
defaults include --use_fast_math, whose flush-to-zero would change float32 results next to zero, so
`configure()` also turns ftz, division and square root back to IEEE for every NVRTC compile in the process
(ours, TVM's own on a GPU machine, MetaSchedule's builders) (FMA contraction is left on: our kernels
never multiply and add floats in one stage where rounding could differ, see kernels/dequant.py).
"""

from __future__ import annotations

import os
import re
import site
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

EXACT_MATH = ["--ftz=false", "--prec-div=true", "--prec-sqrt=true"]
INSTALL_HINT = "install the pip CUDA toolkit: pip install 'tvmquant[cuda]'"


def toolkit_root() -> Path | None:
    """site-packages/nvidia/cu13 where the CUDA 13 wheels put nvcc, ptxas, NVRTC and the headers."""
    for base in [*site.getsitepackages(), site.getusersitepackages()]:
        root = Path(base) / "nvidia" / "cu13"
        if (root / "bin" / "ptxas").is_file():
            return root
    return None


def configure() -> Path:
    """Put the wheels' toolkit on PATH / CUDA_PATH / TVM's NVRTC include options (idempotent)."""
    root = toolkit_root()
    if root is None:
        raise UserError(f"no CUDA compiler found; {INSTALL_HINT}")
    bin_dir, cccl = str(root / "bin"), f"-I{root / 'include' / 'cccl'}"
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    os.environ.setdefault("CUDA_PATH", str(root))
    extra = os.environ.get("TVM_CUDA_NVRTC_EXTRA_OPTS", "").split()
    os.environ["TVM_CUDA_NVRTC_EXTRA_OPTS"] = " ".join(extra + [o for o in (cccl, *EXACT_MATH) if o not in extra])
    return root


def compile_source(source: str, arch: str, fmt: str = "cubin") -> bytes:
    """CUDA C -> cubin (or ptx, without its trailing NUL) for `arch` through NVRTC, with exact float math."""
    import tvm
    from tvm.support import nvcc

    configure()
    with tvm.target.Target({"kind": "cuda", "arch": arch}):
        try:
            binary = bytes(nvcc.compile_cuda(source, target_format=fmt, arch=arch, compiler="nvrtc"))
        except RuntimeError as exc:
            raise RuntimeError(f"CUDA compilation for {arch} failed: {exc}") from exc
    return binary.rstrip(b"\0") if fmt == "ptx" else binary


@dataclass(frozen=True)
class KernelUsage:
    """What ptxas reports for one kernel: registers per thread, spill bytes, static shared memory, stack."""

    registers: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int
    stack_bytes: int


@dataclass(frozen=True)
class ArchLimits:
    registers: int  # per thread
    shared_bytes: int  # static shared memory per block (more needs dynamic shared memory and an opt-in)


ARCH_LIMITS = {"sm_80": ArchLimits(255, 48 * 1024), "sm_86": ArchLimits(255, 48 * 1024),
               "sm_89": ArchLimits(255, 48 * 1024), "sm_90": ArchLimits(255, 48 * 1024)}

_FUNCTION = re.compile(r"Compiling entry function '(\w+)'")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def ptxas_usage(ptx: bytes, arch: str) -> dict[str, KernelUsage]:
    """Assemble `ptx` to a cubin with `ptxas -v` (which fails on e.g. shared-memory overflow, where PTX alone
    compiles) and parse its per-kernel resource report."""
    root = configure()
    with tempfile.TemporaryDirectory(prefix="tvmquant-ptxas-") as tmp:
        src, out = Path(tmp) / "kernels.ptx", Path(tmp) / "kernels.cubin"
        src.write_bytes(ptx)
        done = subprocess.run([str(root / "bin" / "ptxas"), "-v", f"-arch={arch}", str(src), "-o", str(out)],
                              capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ptxas for {arch} failed: {done.stderr.strip()}")
    usage, name, stack = {}, None, (0, 0, 0)
    for line in done.stderr.splitlines():
        if m := _FUNCTION.search(line):
            name = m.group(1)
        elif m := _SPILLS.search(line):
            stack = tuple(int(g) for g in m.groups())
        elif (m := _USED.search(line)) and name:
            usage[name] = KernelUsage(int(m.group(1)), stack[1], stack[2], int(m.group(2) or 0), stack[0])
            name = None
    return usage
