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
from cuda_emulator import EmulatedKernels, launch_extents
from models_for_tests import KERNEL_SHAPES

pytestmark = pytest.mark.skipif(toolkit.toolkit_root() is None, reason=f"no pip CUDA toolkit: {toolkit.INSTALL_HINT}")

FAMILIES = list(FAMILY_BITS)
# the built-in digits CNN's layers (models/digits.py), conv2 and fc1 at batch 16, plus the awkward shapes every
# kernel test uses
MODEL_SHAPES = [(1, 1, 8, 8, 16, (3, 3), (1, 1), (1, 1)), (16, 16, 8, 8, 32, (3, 3), (2, 2), (1, 1)),
                (1, 32, 4, 4, 32, (3, 3), (1, 1), (1, 1)), (16, 512, 1, 1, 64, (1, 1), (1, 1), (0, 0)),
                (1, 64, 1, 1, 10, (1, 1), (1, 1), (0, 0))]
SHAPES = MODEL_SHAPES + KERNEL_SHAPES
# the depthwise family's layers (groups last): MobileNetV2's and EfficientNet-Lite0's depthwise convs at full
# size, then batch 2 with stride 2 and odd sizes, channel multiplier 2 without padding, 3 channels per group,
# a width that leaves a tail of threads, and 32 channels per group (staged in chunks, the tile shrunk to fit)
DEPTHWISE_SHAPES = [(1, 32, 112, 112, 32, (3, 3), (1, 1), (1, 1), 32), (1, 96, 112, 112, 96, (3, 3), (2, 2), (1, 1), 96),
                    (1, 144, 56, 56, 144, (3, 3), (1, 1), (1, 1), 144), (1, 960, 7, 7, 960, (3, 3), (1, 1), (1, 1), 960),
                    (1, 240, 28, 28, 240, (5, 5), (2, 2), (2, 2), 240), (2, 6, 11, 7, 6, (3, 3), (2, 2), (1, 1), 6),
                    (1, 4, 6, 17, 8, (3, 3), (1, 1), (0, 0), 4), (2, 12, 7, 5, 8, (3, 3), (1, 1), (1, 1), 4),
                    (1, 64, 37, 37, 64, (3, 3), (1, 1), (1, 1), 64), (1, 256, 14, 14, 8, (3, 3), (1, 1), (1, 1), 8)]
INSTRUCTIONS = {  # (in the CUDA source, in the PTX)
    "bitserial": ("__popcll", "popc.b64"), "multipoint": ("__popcll", "popc.b64"),
    "shift": ("<<", "shl.b32"), "lut": ("table_shared", "ld.shared.u8"), "dequant": ("double", "fma.rn.f64"),
    "int8": ("__dp4a", "dp4a.u32.u32"), "depthwise": ("short centred_shared", "ld.shared."),
}


def shapes_of(family: str) -> list[tuple]:
    return DEPTHWISE_SHAPES if family == "depthwise" else SHAPES


def kernel_names(source: str) -> set[str]:
    return set(re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(", source))


def cuda_target(arch: str = "sm_80") -> Target:
    return Target({"kind": "cuda", "arch": arch}, host={"kind": "llvm"})


def schedule(func: tvm.tirx.PrimFunc, target: Target) -> tvm.tirx.PrimFunc:
    sch = next(s for s in (rule.apply(func, target, False) for rule in RULES) if s is not None)
    return sch.mod["main"]


@lru_cache(maxsize=None)
def family_source(family: str, bits: tuple[int, int] | None = None) -> str:
    """One CUDA translation unit with the family's kernel for every test shape (compiled once per session)."""
    target = cuda_target()
    with target:  # as in a CUDA build (int8 picks its activation codes' signedness from the target)
        prims = [unscheduled(family, shape, bits=bits)[1].prim for shape in shapes_of(family)]
    funcs = {f"k{i}": schedule(prim, target).with_attr("global_symbol", f"k{i}") for i, prim in enumerate(prims)}
    lib = tvm.compile(tvm.IRModule(funcs), target)
    (module,) = artifact.cuda_modules(lib.mod)
    return module.inspect_source("cuda")


@lru_cache(maxsize=None)
def family_ptx(family: str, arch: str) -> bytes:
    return toolkit.compile_source(family_source(family), arch, "ptx")


@pytest.mark.parametrize("family", FAMILIES)
def test_rules_claim_their_family_only(family):
    _, call = unscheduled(family, shapes_of(family)[0])
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
    assert {f"k{i}_kernel" for i in range(len(shapes_of(family)))} <= kernel_names(source)  # every shape's kernels


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


INT8_NO_ASUM = (4, 4)  # T fits int8 (multiplier 1, no activation-sum term): the epilogue without channel sums


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_int8_without_activation_sums_builds_with_dp4a(arch):
    source = family_source("int8", INT8_NO_ASUM)
    assert "channel_sum" not in source and source.count("__dp4a(") >= len(SHAPES)
    usage = toolkit.ptxas_usage(toolkit.compile_source(source, arch, "ptx"), arch)
    assert set(usage) == kernel_names(source)
    assert all(u.spill_stores == 0 and u.registers <= toolkit.ARCH_LIMITS[arch].registers for u in usage.values())


@pytest.mark.parametrize("family", ["int8", "bitserial"])
def test_gemv_splits_the_reduction_over_threads_only_for_few_output_pixels(family):
    """A 4096 x 4096 GEMV (1 pixel) sums slices of K across threadIdx.y (cross-thread reduction through shared
    memory, `red_buf`); a conv with 16 x 16 output pixels tiles pixels x channels and stages its activations."""
    staged = {"int8": "act_codes_shared", "bitserial": "pack_act_shared"}[family]
    target = cuda_target()
    sources = {}
    for name, shape in (("gemv", (1, 4096, 1, 1, 4096, (1, 1), (1, 1), (0, 0))),
                        ("conv", (1, 16, 16, 16, 32, (3, 3), (1, 1), (1, 1)))):
        with target:
            prim = unscheduled(family, shape, bits=(2, 8))[1].prim
        lib = tvm.compile(tvm.IRModule({"main": schedule(prim, target)}), target)
        sources[name] = artifact.cuda_modules(lib.mod)[0].inspect_source("cuda")
    assert "red_buf" in sources["gemv"] and staged not in sources["gemv"]
    assert staged in sources["conv"] and "red_buf" not in sources["conv"]
    usage = toolkit.ptxas_usage(toolkit.compile_source(sources["gemv"], "sm_90", "ptx"), "sm_90")
    assert all(u.spill_stores == 0 and u.stack_bytes == 0 for u in usage.values()), usage


DP4A_EMULATION = """
int dp4a_signed;  /* CUDA's two __dp4a overloads, chosen at run time: the tensorized block calls one symbol */
unsigned int __dp4a(unsigned int a, unsigned int b, unsigned int c) {
  for (int i = 0; i < 4; ++i) {
    int x = (a >> (8 * i)) & 255, y = (b >> (8 * i)) & 255;
    if (dp4a_signed) { x = (signed char)x; y = (signed char)y; }
    c += (unsigned int)(x * y);
  }
  return c;
}
"""


@pytest.fixture(scope="module")
def dp4a_on_the_cpu(tmp_path_factory):
    """A C `__dp4a` with CUDA's semantics, loaded globally so that LLVM-compiled TIR calling it links to it."""
    import ctypes

    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to emulate __dp4a")
    folder = tmp_path_factory.mktemp("dp4a")
    (folder / "dp4a.c").write_text(DP4A_EMULATION)
    subprocess.run(["gcc", "-shared", "-fPIC", str(folder / "dp4a.c"), "-o", str(folder / "libdp4a.so")], check=True)
    return ctypes.CDLL(str(folder / "libdp4a.so"), mode=ctypes.RTLD_GLOBAL)


@pytest.mark.parametrize("scope", ["shared", "global"])
@pytest.mark.parametrize("codes", ["uint8", "int8"])
def test_the_dp4a_block_computes_its_description(codes, scope, dp4a_on_the_cpu):
    """The tensorized block's implementation (u8 codes: unsigned __dp4a with flipped weights and the activation
    sum; s8: signed __dp4a), run on this CPU against an emulated __dp4a, equals the sum it replaces in int64,
    weight and code extremes included."""
    from tvmquant.cuda.rules import dp4a

    ctypes_flag = __import__("ctypes").c_int.in_dll(dp4a_on_the_cpu, "dp4a_signed")
    ctypes_flag.value = int(codes == "int8")
    _, impl = dp4a._intrin(codes, scope)
    lib = tvm.compile(tvm.IRModule({"main": impl.with_attr("global_symbol", "main")}), "llvm")
    info = np.iinfo(codes)
    rng = np.random.default_rng(0)
    for trial in range(64):
        a = rng.integers(info.min, info.max + 1, 4).astype(codes)
        w = rng.integers(-128, 128, (4, 4)).astype(np.int8)
        if trial < 4:  # the extremes
            a[:] = (info.max, info.min)[trial % 2]
            w[:] = (-128, 127)[trial // 2]
        c = rng.integers(-(2**30), 2**30, 4).astype(np.int32)
        out = tvm.runtime.tensor(c.copy())
        lib(tvm.runtime.tensor(a), tvm.runtime.tensor(w), out)
        np.testing.assert_array_equal(out.numpy(), c + w.astype(np.int64) @ a.astype(np.int64))


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
    # the 8-bit first/last layers are int8's (main's cost rule), scheduled by the __dp4a rule
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


@pytest.fixture(scope="module")
def depthwise_model_artifact(tmp_path_factory):
    """MobileNetV2 (scripts/depthwise_models.py, width 0.25, 32 x 32 inputs) W4A4 for cuda, and the CUDA source
    its cubin was compiled from."""
    from tvmquant.compile import compile_model, load_source
    from tvmquant.quantize import QuantConfig

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from depthwise_models import mobilenet_v2

    calib = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    source = load_source(mobilenet_v2(width=0.25, classes=10), (1, 3, 32, 32), calib=calib, eval_x=calib[:2])
    sources, compile_source = [], toolkit.compile_source
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(toolkit, "compile_source", lambda src, *a: sources.append(src) or compile_source(src, *a))
        result = compile_model(source, QuantConfig(4, 4), load_target("cuda"),
                               tmp_path_factory.mktemp("cuda-dw") / "mobilenet.so")
    (cuda_source,) = sources
    return result, cuda_source


def test_depthwise_model_compiles_with_the_depthwise_rule(depthwise_model_artifact):
    """Every depthwise layer of MobileNetV2 is the depthwise family's, scheduled by its CUDA rule: one kernel
    per layer that stages centred codes in shared memory (no generic dlight schedule, no codes kernel)."""
    result, source = depthwise_model_artifact
    grouped = [name for name, layer in result.scheme.layers.items() if layer.groups != 1]
    assert len(grouped) == 17 and {result.kernels[name] for name in grouped} == {"depthwise"}
    bodies = {name: body for name, body in re.findall(
        r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\([^)]*\) \{(.*?)\n\}\n", source, re.S)}
    kernels = {name: body for name, body in bodies.items() if name.startswith("depthwise_")}
    assert set(kernels) == {f"depthwise_{name.replace('.', '_')}_kernel" for name in grouped}
    assert all("short centred_shared" in body and "weight_local" in body for body in kernels.values())
    assert len(artifact.embedded_cubins(result.artifact)) == 1


# ---- on a GPU --------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def cuda_device():
    if not gpu_present():
        pytest.skip("no CUDA GPU here (tvm.cuda().exist is False): the gpu tests did not run")
    return tvm.cuda()


@pytest.mark.gpu
@pytest.mark.parametrize("family,shape", [(f, s) for f in FAMILIES for s in shapes_of(f)],
                         ids=lambda v: v if isinstance(v, str) else "x".join(map(str, v[:5])))
def test_every_family_is_exact_on_the_gpu(family, shape, cuda_device):
    _exact_on_the_gpu(family, shape, cuda_device)


def _exact_on_the_gpu(family: str, shape: tuple, cuda_device, bits: tuple[int, int] | None = None) -> None:
    with cuda_target():  # int8 picks its activation codes' signedness from the target, as in a CUDA build
        layer, call = unscheduled(family, shape, seed=5, bits=bits)
    _check_on_the_gpu(layer, call, shape, cuda_device)


def _check_on_the_gpu(layer, call, shape: tuple, cuda_device) -> None:
    """The kernel, scheduled by its CUDA rule, run on the GPU: bit for bit the PyTorch reference of the layer."""
    x, want = _input_and_reference(layer, shape)
    toolkit.configure()
    lib = tvm.compile(tvm.IRModule({"main": schedule(call.prim, cuda_target())}), cuda_target())
    out = tvm.runtime.tensor(np.zeros_like(want), cuda_device)
    lib(*[tvm.runtime.tensor(np.ascontiguousarray(a), cuda_device) for a in (x, *call.consts)], out)
    np.testing.assert_array_equal(out.numpy(), want)


def _input_and_reference(layer, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """A random input of `shape` and the PyTorch reference of the layer on it, (N, O, OH, OW) float32."""
    x = (2 * np.random.default_rng(3).standard_normal(shape[:4])).astype(np.float32)
    geometry = layer_geometry(layer, shape[:4])
    xt = torch.from_numpy(x if layer.op == "conv2d" else x.reshape(len(x), -1))
    want = quantized_layer(xt, layer, None).numpy()
    return x, want.reshape(shape[0], geometry.out_channels, *geometry.out_hw)


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to emulate CUDA's threads")
def test_depthwise_cuda_source_run_with_emulated_threads_is_exact(tmp_path):
    """No GPU here: the depthwise rule's CUDA source itself (the translation unit the cubin tests build), its
    threads, shared memory and barriers emulated on the CPU (cuda_emulator.py), bit for bit the reference."""
    kernels = EmulatedKernels(family_source("depthwise"), tmp_path)
    for i, shape in enumerate(DEPTHWISE_SHAPES):
        layer, call = unscheduled("depthwise", shape)  # the instance family_source compiled
        prim = schedule(call.prim, cuda_target())
        x, want = _input_and_reference(layer, shape)
        out = np.zeros_like(want)
        names = [p.name for p in prim.params]
        kernels.run(f"k{i}_kernel", launch_extents(prim), dict(zip(names, [x, *call.consts, out])))
        assert np.abs(want).max() > 0
        np.testing.assert_array_equal(out, want, err_msg=str(shape))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])))
def test_int8_without_activation_sums_is_exact_on_the_gpu(shape, cuda_device):
    _exact_on_the_gpu("int8", shape, cuda_device, INT8_NO_ASUM)


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
def test_depthwise_model_runs_on_the_gpu_like_the_reference(depthwise_model_artifact, cuda_device):
    from tvmquant.compile import evaluate

    evaluation = evaluate(depthwise_model_artifact[0], None)
    assert evaluation.compiled is not None, evaluation.where
    np.testing.assert_allclose(evaluation.compiled, evaluation.reference, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_every_method_runs_on_the_gpu_like_the_reference(method_artifact, cuda_device):
    from tvmquant.compile import evaluate

    evaluation = evaluate(method_artifact, None)
    assert evaluation.compiled is not None, evaluation.where
    np.testing.assert_allclose(evaluation.compiled, evaluation.reference, rtol=1e-5, atol=1e-5)


# ---- --float16 -------------------------------------------------------------------------------------------

def _float16_module() -> tvm.IRModule:
    """conv2d -> relu -> a kernel (call_tir, float32 in and out) -> relu -> matmul, weights bound as constants:
    what a model with a float32 layer on each side of a quantized one is before legalization."""
    from tvm.script import ir as I, relax as R, tirx as T

    @I.ir_module
    class Module:
        @T.prim_func(private=True, s_tir=True)
        def kernel(x: T.Buffer((1, 4, 4, 4), "float32"), y: T.Buffer((1, 4, 4, 4), "float32")):
            T.func_attr({"op_pattern": 8})  # opaque, as the pass marks tvmquant's kernels: never fused
            for n, c, h, w in T.grid(1, 4, 4, 4):
                with T.sblock("double"):
                    vn, vc, vh, vw = T.axis.remap("SSSS", [n, c, h, w])
                    y[vn, vc, vh, vw] = x[vn, vc, vh, vw] * T.float32(2)

        @R.function
        def main(x: R.Tensor((1, 4, 4, 4), "float32"), w: R.Tensor((4, 4, 3, 3), "float32"),
                 m: R.Tensor((64, 8), "float32")):
            R.func_attr({"num_input": 1})
            with R.dataflow():
                a = R.nn.relu(R.nn.conv2d(x, w, padding=1))
                b = R.call_tir(Module.kernel, (a,), out_ty=R.Tensor((1, 4, 4, 4), "float32"))
                c = R.matmul(R.reshape(R.nn.relu(b), (1, 64)), m)
                R.output(c)
            return c

    rng = np.random.default_rng(0)
    weights = {"w": rng.standard_normal((4, 4, 3, 3)), "m": rng.standard_normal((64, 8))}
    bind = tvm.relax.transform.BindParams("main", {k: tvm.runtime.tensor(v.astype(np.float32)) for k, v in weights.items()})
    return bind(Module)


def _param_dtypes(mod: tvm.IRModule) -> dict[str, set[str]]:
    return {gv.name_hint: {str(p.dtype) for p in f.params} for gv, f in mod.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc)}


def test_float16_runs_the_float32_ops_in_half_and_keeps_float32_io_and_kernels():
    from tvmquant import pipeline
    from tvmquant.cuda.target import with_float16

    spec = with_float16(load_target("cuda"), True)
    mod = pipeline.legalize(_float16_module(), spec)
    main = mod["main"]
    assert [str(p.ty.dtype) for p in main.params] == ["float32"] and str(main.ret_ty.dtype) == "float32"
    dtypes = _param_dtypes(mod)
    assert dtypes["kernel"] == {"float32"}  # the kernel is untouched
    conv = next(n for n in dtypes if "conv2d" in n)
    matmul = next(n for n in dtypes if "matmul" in n)
    assert "float16" in dtypes[conv] and "float16" in dtypes[matmul]
    assert all("float16" not in d for d in _param_dtypes(pipeline.legalize(_float16_module(),
                                                                          load_target("cuda"))).values())
    exe = pipeline.finalize(pipeline.default_schedules(mod, spec), spec)
    (module,) = artifact.cuda_modules(exe.mod)
    source = module.inspect_source("cuda")
    assert "half" in source
    usage = toolkit.ptxas_usage(toolkit.compile_source(source, "sm_80", "ptx"), "sm_80")
    assert set(usage) == kernel_names(source)


@pytest.fixture(scope="module")
def float16_model_artifact(tmp_path_factory):
    """The digits CNN with float32 first/last layers (conv1, fc2) built with --float16 for sm_90, and the CUDA
    source its cubin was compiled from."""
    from tvmquant.compile import compile_model, load_source
    from tvmquant.cuda.target import with_float16
    from tvmquant.models import digits
    from tvmquant.quantize import QuantConfig

    x, y = digits.load_split("test")
    spec = with_float16(with_arch(load_target("cuda"), "sm_90"), True)
    sources, compile_source = [], toolkit.compile_source
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(toolkit, "compile_source", lambda src, *a: sources.append(src) or compile_source(src, *a))
        result = compile_model(load_source(None, eval_x=x[:64], eval_y=y[:64]), QuantConfig(2, 2, first_last_bits=None),
                               spec, tmp_path_factory.mktemp("cuda16") / "digits16.so")
    (source,) = sources
    return result, source


def test_float16_compiles_the_default_model_with_its_float32_edge_layers_in_half(float16_model_artifact):
    """--first-last-bits fp32 --float16: conv1 and fc2 run in float16 (their CUDA kernels take half), the
    quantized layers keep their kernels, and the artifact holds the cubin."""
    result, source = float16_model_artifact
    assert set(result.kernels) == {"conv2", "conv3", "fc1"}
    half_kernels = {n for n in kernel_names(source) if re.search(rf"void (?:__launch_bounds__\(\d+\) )?{n}\([^)]*half", source)}
    assert any("conv2d" in n for n in half_kernels) and any("matmul" in n for n in half_kernels)
    assert not any(n.startswith("bitserial_") for n in half_kernels)
    assert len(artifact.embedded_cubins(result.artifact)) == 1


@pytest.mark.gpu
def test_float16_model_runs_on_the_gpu_close_to_the_reference(float16_model_artifact, cuda_device):
    """Only the float32 layers and ops are rounded to float16: outputs within float16 rounding of the float32
    reference, the same answers."""
    from tvmquant.compile import evaluate

    evaluation = evaluate(float16_model_artifact[0], None)
    assert evaluation.compiled is not None, evaluation.where
    np.testing.assert_allclose(evaluation.compiled, evaluation.reference, rtol=2e-2, atol=2e-2)
    assert (evaluation.compiled.argmax(1) == evaluation.reference.argmax(1)).mean() >= 0.95


def test_float16_mistakes_are_one_line_errors(capsys):
    assert main(["compile", "--target", "x86", "--float16", "-o", "never.so"]) == 2
    assert "--float16 applies to CUDA targets" in capsys.readouterr().err and not Path("never.so").exists()
