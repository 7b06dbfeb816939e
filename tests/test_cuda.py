"""The CUDA target without a GPU: every family's CUDA code for the default model's and awkward shapes, the
intended instructions in it, cubins for sm_80 and sm_90 within each arch's limits (ptxas -v), and the whole
default model as a .so with a cubin inside that TVM's CUDA loader reads. GPU tests (marker `gpu`) run every
family and the model bit-exactly against the reference, and skip with the reason where no GPU is present."""

from __future__ import annotations

import shutil
import struct
import re
import subprocess
import sys
import textwrap
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from tvm.target import Target

from tvmquant.cli import main
from tvmquant.cuda import artifact, toolkit
from tvmquant.cuda.rules import RULES
from tvmquant.cuda.rules.common import family_of
from tvmquant.cuda.target import gpu_present, with_arch
from tvmquant.errors import UserError
from tvmquant.kernels.family import layer_geometry
from tvmquant.reference import quantized_layer
from tvmquant.target import load_target

from cuda_cases import FAMILY_BITS, unscheduled
from models_for_tests import KERNEL_SHAPES

pytestmark = pytest.mark.skipif(toolkit.toolkit_root() is None, reason=f"no pip CUDA toolkit: {toolkit.INSTALL_HINT}")

FAMILIES = list(FAMILY_BITS)
# the built-in digits CNN's layers (models/digits.py), conv2 and fc1 at batch 16, plus the awkward shapes every
# kernel test uses
MODEL_SHAPES = [(1, 1, 8, 8, 16, (3, 3), (1, 1), (1, 1)), (16, 16, 8, 8, 32, (3, 3), (2, 2), (1, 1)),
                (1, 32, 4, 4, 32, (3, 3), (1, 1), (1, 1)), (16, 512, 1, 1, 64, (1, 1), (1, 1), (0, 0)),
                (1, 64, 1, 1, 10, (1, 1), (1, 1), (0, 0))]
SHAPES = MODEL_SHAPES + KERNEL_SHAPES
INSTRUCTIONS = {  # (in the CUDA source, in the PTX)
    "bitserial": ("__popcll", "popc.b64"), "multipoint": ("__popcll", "popc.b64"),
    "shift": ("<<", "shl.b32"), "lut": ("short table_shared", "ld.shared.s16"), "dequant": ("double", "fma.rn.f64"),
}


def kernel_names(source: str) -> set[str]:
    return set(re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(", source))


def cuda_target(arch: str = "sm_80") -> Target:
    return Target({"kind": "cuda", "arch": arch}, host={"kind": "llvm"})


def schedule(func: tvm.tirx.PrimFunc, target: Target) -> tvm.tirx.PrimFunc:
    sch = next(s for s in (rule.apply(func, target, False) for rule in RULES) if s is not None)
    return sch.mod["main"]


@lru_cache(maxsize=None)
def family_source(family: str) -> str:
    """One CUDA translation unit with the family's kernel for every test shape (compiled once per session)."""
    target = cuda_target()
    funcs = {f"k{i}": schedule(unscheduled(family, shape)[1].prim, target).with_attr("global_symbol", f"k{i}")
             for i, shape in enumerate(SHAPES)}
    lib = tvm.compile(tvm.IRModule(funcs), target)
    (module,) = artifact.cuda_modules(lib.mod)
    return module.inspect_source("cuda")


@lru_cache(maxsize=None)
def family_ptx(family: str, arch: str) -> bytes:
    return toolkit.compile_source(family_source(family), arch, "ptx")


@pytest.mark.parametrize("family", FAMILIES)
def test_rules_claim_their_family_only(family):
    _, call = unscheduled(family, SHAPES[0])
    assert family_of(call.prim) == family
    claimed = [rule.family for rule in RULES if rule.apply(call.prim, cuda_target(), False) is not None]
    assert claimed == [family]
    assert all(rule.apply(call.prim, load_target("x86").tvm_target, False) is None for rule in RULES)


@pytest.mark.parametrize("family", FAMILIES)
def test_source_has_the_intended_instructions(family):
    source, ptx = family_source(family), family_ptx(family, "sm_80").decode()
    in_source, in_ptx = INSTRUCTIONS[family]
    assert in_source in source and in_ptx in ptx
    assert "__shared__" in source  # the activation operand is staged in shared memory
    assert {f"k{i}_kernel" for i in range(len(SHAPES))} <= kernel_names(source)  # every shape got its kernels


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_kernel_builds_to_cubin_within_the_arch_limits(family, arch):
    usage = toolkit.ptxas_usage(family_ptx(family, arch), arch)
    limits = toolkit.ARCH_LIMITS[arch]
    assert set(usage) == kernel_names(family_source(family))
    for name, use in usage.items():
        assert use.registers <= limits.registers and use.shared_bytes <= limits.shared_bytes, (name, use)
        assert use.spill_stores == 0 and use.spill_loads == 0, (name, use)
    assert max(use.shared_bytes for use in usage.values()) > 0


def test_ptxas_refuses_what_does_not_fit():
    """The limit check can fail: a kernel with 64 KB of static shared memory assembles to PTX, not to a cubin."""
    source = textwrap.dedent("""
        extern "C" __global__ void big(float* out) {
          __shared__ float buffer[16384];
          buffer[threadIdx.x] = threadIdx.x;
          __syncthreads();
          out[threadIdx.x] = buffer[(threadIdx.x + 1) % 16384];
        }""")
    with pytest.raises(RuntimeError):
        toolkit.compile_source(source, "sm_80", "cubin")
    ptx = toolkit.compile_source(source.replace("16384", "1024"), "sm_80", "ptx")
    assert toolkit.ptxas_usage(ptx, "sm_80")["big"].shared_bytes == 4096


def test_kernels_are_compiled_without_flush_to_zero():
    """TVM's NVRTC default --use_fast_math would flush float32 denormals (mul.ftz.f32): not the reference's math."""
    ptx = toolkit.compile_source('extern "C" __global__ void f(float* o) { o[threadIdx.x] *= 1e-30f; }',
                                 "sm_80", "ptx").decode()
    assert "mul.f32" in ptx and ".ftz" not in ptx


def test_swap_binaries_rewrites_only_cuda_source_modules():
    def string(b: bytes) -> bytes:
        return struct.pack("<Q", len(b)) + b

    table = b"\x01\x02\x03"
    cuda = string(b"cuda") + table + string(b"__global__ void k() {}")
    other = string(b"llvm") + string(b"not cuda")
    body = string(b"llvm") + string(other) + string(b"cuda") + string(cuda)
    blob = struct.pack("<Q", len(body)) + body
    swapped = artifact.swap_binaries(blob, {b"__global__ void k() {}": b"\x7fELFcubin"})
    new = string(b"cubin") + table + string(b"\x7fELFcubin")
    assert swapped == struct.pack("<Q", len(body) - len(cuda) + len(new)) + body.replace(string(cuda), string(new))
    assert artifact.swap_binaries(blob, {b"other source": b"x"}) == blob


@pytest.fixture(scope="module")
def default_model_artifact(tmp_path_factory):
    """The built-in digits CNN, W2A2 (first/last 8 bits), compiled for cuda sm_90 (16 evaluation digits)."""
    from tvmquant.compile import load_source
    from tvmquant.models import digits

    x, y = digits.load_split("test")
    source = load_source(None, eval_x=x[:16], eval_y=y[:16])
    out = tmp_path_factory.mktemp("cuda") / "digits-cuda.so"
    from tvmquant.compile import compile_model
    from tvmquant.quantize import QuantConfig

    result = compile_model(source, QuantConfig(2, 2), with_arch(load_target("cuda"), "sm_90"), out)
    return result


def test_default_model_compiles_to_a_library_with_a_cubin(default_model_artifact):
    result = default_model_artifact
    # the 8-bit first/last layers are int8's (main's cost rule); with no CUDA rule of its own yet, dlight's
    # Fallback schedules that kernel
    assert set(result.kernels.values()) == {"bitserial", "int8"}
    (cubin,) = artifact.embedded_cubins(result.artifact)
    assert cubin.startswith(b"\x7fELF")
    assert b"__global__" not in result.artifact.read_bytes()  # no CUDA source left to compile at load time


STUB_DRIVER = """
int cuDeviceGetName(){return 100;} int cuFuncSetAttribute(){return 100;} int cuLaunchKernelEx(){return 100;}
int cuModuleGetFunction(){return 100;} int cuModuleLoadData(){return 100;} int cuModuleUnload(){return 0;}
int cuTensorMapEncodeTiled(){return 100;}
int cuGetErrorName(int e, const char** s){*s = "CUDA_ERROR_NO_DEVICE"; return 0;}
int cuGetErrorString(int e, const char** s){*s = "no device (stub driver)"; return 0;}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc for a stub CUDA driver")
def test_artifact_loads_with_tvms_cuda_loader(default_model_artifact, tmp_path):
    """TVM's own CUDA runtime (loadable here against a stub libcuda.so.1 that has no device) reads the
    artifact's CUDA module as a cubin module: the format a GPU machine loads with only its driver."""
    (tmp_path / "stub.c").write_text(STUB_DRIVER)
    subprocess.run(["gcc", "-shared", "-fPIC", str(tmp_path / "stub.c"), "-o", str(tmp_path / "libcuda.so.1")],
                   check=True)
    probe = textwrap.dedent(f"""
        import tvm
        from tvm import relax
        lib = tvm.runtime.load_module({str(default_model_artifact.artifact)!r})
        relax.VirtualMachine(lib, tvm.cpu())
        stack, found = [lib], []
        while stack:
            m = stack.pop(); stack.extend(m.imports)
            if m.kind == "cuda":
                try:
                    m.inspect_source("cubin")
                except UnicodeDecodeError as exc:  # the binary itself, not text
                    found.append(exc.object[:4])
        print(tvm.runtime.enabled("cuda"), found)
        """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={**__import__("os").environ, "LD_LIBRARY_PATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "[b'\\x7fELF']"]


def test_compile_without_a_gpu_says_accuracy_was_not_measured(default_model_artifact):
    from tvmquant.compile import evaluate

    if gpu_present():
        pytest.skip("a GPU is present: the compiled module is measured")
    evaluation = evaluate(default_model_artifact, None)
    assert evaluation.compiled is None and "no CUDA GPU" in evaluation.where


def test_cuda_arch_mistakes_are_one_line_errors(capsys):
    with pytest.raises(UserError, match="CUDA targets"):
        with_arch(load_target("x86"), "sm_90")
    with pytest.raises(UserError, match="sm_80 or sm_90"):
        with_arch(load_target("cuda"), "ampere")
    assert main(["compile", "--target", "cuda", "--cuda-arch", "90", "-o", "never.so"]) == 2
    assert "tvmquant: error:" in capsys.readouterr().err and not Path("never.so").exists()


def test_run_without_a_gpu_is_a_one_line_error(default_model_artifact, capsys):
    if gpu_present():
        pytest.skip("a GPU is present")
    assert main(["run", "--target", "cuda", str(default_model_artifact.artifact)]) == 2
    assert "no CUDA GPU on this machine" in capsys.readouterr().err


METHODS = {"inq": {"shift"}, "uniq": {"lut", "dequant"}, "multipoint": {"multipoint"}}  # 3 bits: uniq's 8-bit
# first/last layers are dequant's (lut takes codebooks up to 4 bits)


@pytest.fixture(scope="module", params=list(METHODS))
def method_artifact(request, tmp_path_factory):
    """The awkward model (odd channels, stride 2, padding, K = 45 and 70) W3A3 by a method, for cuda."""
    from models_for_tests import awkward_source
    from tvmquant.compile import compile_model
    from tvmquant.quantize import QuantConfig

    out = tmp_path_factory.mktemp("cuda") / f"awkward-{request.param}.so"
    edges = 3 if request.param == "inq" else 8  # INQ's 8-bit layers are uniform: keep every layer pow2
    return compile_model(awkward_source(1), QuantConfig(3, 3, edges, method=request.param), load_target("cuda"), out)


def test_every_method_compiles_for_cuda(method_artifact):
    assert set(method_artifact.kernels.values()) == METHODS[method_artifact.config.method]
    assert len(artifact.embedded_cubins(method_artifact.artifact)) == 1


# ---- on a GPU --------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def cuda_device():
    if not gpu_present():
        pytest.skip("no CUDA GPU here (tvm.cuda().exist is False): the gpu tests did not run")
    return tvm.cuda()


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])))
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_exact_on_the_gpu(family, shape, cuda_device):
    layer, call = unscheduled(family, shape, seed=5)
    x = (2 * np.random.default_rng(3).standard_normal(shape[:4])).astype(np.float32)
    toolkit.configure()
    lib = tvm.compile(tvm.IRModule({"main": schedule(call.prim, cuda_target())}), cuda_target())
    geometry = layer_geometry(layer, shape[:4])
    out = tvm.runtime.tensor(np.zeros((shape[0], geometry.out_channels, *geometry.out_hw), np.float32), cuda_device)
    lib(*[tvm.runtime.tensor(np.ascontiguousarray(a), cuda_device) for a in (x, *call.consts)], out)
    xt = torch.from_numpy(x if layer.op == "conv2d" else x.reshape(len(x), -1))
    want = quantized_layer(xt, layer, None).numpy().reshape(out.shape)
    np.testing.assert_array_equal(out.numpy(), want)


@pytest.mark.gpu
def test_default_model_runs_on_the_gpu_like_the_reference(default_model_artifact, cuda_device):
    from tvmquant.compile import evaluate

    evaluation = evaluate(default_model_artifact, None)
    assert evaluation.compiled is not None, evaluation.where
    np.testing.assert_allclose(evaluation.compiled, evaluation.reference, rtol=1e-5, atol=1e-5)
    assert (evaluation.compiled.argmax(1) == evaluation.reference.argmax(1)).all()


def test_tune_tasks_for_cuda_schedule_by_default_and_have_a_gpu_search_space():
    """What `tune --target cuda` does before measuring: extract the tasks, build each one's untuned default
    (family rule or dlight) for the GPU, and generate MetaSchedule's GPU design space for them."""
    from tvm.s_tir import meta_schedule as ms

    from models_for_tests import awkward_source
    from tvmquant import tune
    from tvmquant.adapters import for_target
    from tvmquant.pipeline import QuantRequest
    from tvmquant.quantize import QuantConfig

    spec = load_target("cuda")
    tasks = tune.extract_tasks(awkward_source(1), QuantRequest(QuantConfig(2, 2)), spec)
    names = [task.task_name for task in tasks]
    assert any(n.startswith("bitserial_") for n in names) and any(n.startswith("fused_") for n in names)
    with spec.tvm_target:
        for task in tasks:
            lib = tvm.compile(tune._default_schedule(task, spec), spec.tvm_target)
            assert artifact.cuda_modules(lib.mod), task.task_name
    with tune._without_tensor_intrin():
        for task in (tasks[0], tasks[-1]):
            context = ms.TuneContext(mod=task.dispatched[0], target=spec.tvm_target,
                                     space_generator=for_target(spec).tuning_space(), task_name=task.task_name)
            assert context.generate_design_space(), task.task_name


@pytest.mark.gpu
def test_every_method_runs_on_the_gpu_like_the_reference(method_artifact, cuda_device):
    from tvmquant.compile import evaluate

    evaluation = evaluate(method_artifact, None)
    assert evaluation.compiled is not None, evaluation.where
    np.testing.assert_allclose(evaluation.compiled, evaluation.reference, rtol=1e-5, atol=1e-5)
