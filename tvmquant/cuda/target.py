"""CUDA target specifics the rest of tvmquant asks about: is a spec CUDA, its architecture, a GPU here."""

from __future__ import annotations

import dataclasses
import re

import tvm

from ..errors import UserError
from ..target import TargetSpec

ARCH = re.compile(r"sm_\d{2,3}a?")


def is_cuda(spec: TargetSpec) -> bool:
    return spec.tvm_config.get("kind") == "cuda"


def with_arch(spec: TargetSpec, arch: str | None) -> TargetSpec:
    """`spec` compiled for GPU architecture `arch` (--cuda-arch), or unchanged when arch is None."""
    if arch is None:
        return spec
    if not is_cuda(spec):
        raise UserError(f"--cuda-arch applies to CUDA targets, not '{spec.name}'")
    if not ARCH.fullmatch(arch):
        raise UserError(f"--cuda-arch expects an architecture like sm_80 or sm_90, got '{arch}'")
    return dataclasses.replace(spec, tvm_config={**spec.tvm_config, "arch": arch})


FLOAT16_KEY = "float16"  # a target key: the pipeline computes the float32 ops left outside the kernels in float16
KEYS = ["cuda", "gpu"]  # TVM's default keys of the cuda kind (an explicit "keys" list replaces them)


def with_float16(spec: TargetSpec, on: bool) -> TargetSpec:
    """`spec` with --float16: a target key, so that the Relax pipeline sees it and tuning records of the float32
    build (a different target) never apply to the float16 one."""
    if not on:
        return spec
    if not is_cuda(spec):
        raise UserError(f"--float16 applies to CUDA targets, not '{spec.name}'")
    keys = list(spec.tvm_config.get("keys", KEYS))
    return dataclasses.replace(spec, tvm_config={**spec.tvm_config, "keys": [*keys, FLOAT16_KEY]})


def float16(target: tvm.target.Target) -> bool:
    """Whether the float32 ops outside tvmquant's kernels are to run in float16 on `target` (--float16)."""
    return FLOAT16_KEY in target.keys


def gpu_present() -> bool:
    """Whether this process can run CUDA kernels (TVM's CUDA runtime loaded and a device found)."""
    return tvm.runtime.enabled("cuda") and tvm.cuda().exist


def no_gpu_reason(spec: TargetSpec) -> str:
    arch = spec.tvm_config.get("arch", "?")
    return (f"no CUDA GPU on this machine (the artifact holds a {arch} cubin: run it there with "
            f"'tvmquant run --target cuda', or here with --rpc HOST:PORT of a GPU's TVM RPC server)")
