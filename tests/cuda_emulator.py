"""TVM-generated CUDA C run on this CPU with CUDA's thread semantics, for kernels that use only threads, shared
memory and __syncthreads (no warp intrinsics): each thread of a block is a host thread, `__shared__` arrays are
shared by them, `__syncthreads()` is a barrier, and blocks run one after another. Where no GPU is lent this is
how the CUDA source a rule generates is checked against the reference (it does not check the GPU's compiler)."""

from __future__ import annotations

import ctypes
import re
import subprocess
from pathlib import Path

import numpy as np
from tvm import tirx

PRELUDE = r"""
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>
struct Dim { unsigned x, y, z; };
static thread_local Dim threadIdx, blockIdx;
static std::barrier<>* block_barrier;
#define __global__
#define __launch_bounds__(n)
static inline void __syncthreads() { block_barrier->arrive_and_wait(); }
using std::max;
using std::min;
"""
LAUNCHER = r"""
extern "C" void launch_%(name)s(void** args, unsigned gx, unsigned gy, unsigned bx, unsigned by, unsigned bz) {
  std::barrier<> barrier(bx * by * bz);
  block_barrier = &barrier;
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < bx * by * bz; ++t)
    threads.emplace_back([=, &barrier] {
      threadIdx = Dim{t %% bx, t / bx %% by, t / (bx * by)};
      for (unsigned b = 0; b < gx * gy; ++b) {
        blockIdx = Dim{b %% gx, b / gx, 0};
        %(name)s(%(args)s);
        barrier.arrive_and_wait();  /* the block is done before the next one overwrites shared memory */
      }
    });
  for (auto& thread : threads) thread.join();
}
"""
SIGNATURE = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(([^)]*)\) \{')


def launch_extents(func: tirx.PrimFunc) -> dict[str, int]:
    """Thread tag (blockIdx.x, threadIdx.y, ...) -> extent in a scheduled one-kernel PrimFunc (read from its
    script: TVM 0.27's Python has no TIR visitor)."""
    return {tag: int(extent) for extent, tag in re.findall(r'T\.thread_binding\((\d+), thread="(\w+\.\w)"\)',
                                                          func.script())}


class EmulatedKernels:
    """The kernels of one CUDA translation unit, compiled for the CPU with g++; `run(name, extents, buffers)`."""

    def __init__(self, source: str, folder: Path):
        body = source[source.index('extern "C"'):]  # without TVM's CUDA prelude
        # one block at a time: its threads share the function's static arrays
        body = re.sub(r"__shared__ (alignas\(\d+\) )?", r"\1static ", body)
        self.params = {name: [p.split()[-1] for p in params.split(",")] for name, params in SIGNATURE.findall(body)}
        launchers = "".join(LAUNCHER % {"name": name, "args": ", ".join(
            f"({' '.join(p.split()[:-1])})args[{i}]" for i, p in enumerate(params.split(",")))}
            for name, params in SIGNATURE.findall(body))
        (folder / "kernels.cc").write_text(PRELUDE + body + launchers)
        subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", str(folder / "kernels.cc"),
                        "-o", str(folder / "kernels.so")], check=True, capture_output=True)
        self.lib = ctypes.CDLL(str(folder / "kernels.so"))

    def run(self, name: str, extents: dict[str, int], buffers: dict[str, np.ndarray]) -> None:
        """Launch kernel `name` over `extents` with `buffers` (by parameter name without `_ptr`), in place."""
        arrays = [np.ascontiguousarray(buffers[p.removesuffix("_ptr")]) for p in self.params[name]]
        assert all(a is buffers[p.removesuffix("_ptr")] for a, p in zip(arrays, self.params[name])), "not contiguous"
        pointers = (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])
        dims = [extents.get(tag, 1) for tag in ("blockIdx.x", "blockIdx.y", "threadIdx.x", "threadIdx.y", "threadIdx.z")]
        getattr(self.lib, f"launch_{name}")(pointers, *[ctypes.c_uint(d) for d in dims])
