"""The int8 family on CUDA: `__dp4a` (sm_61+: four 8-bit products summed into an int32 in one instruction).

The int8 kernel (kernels/int8.py) reduces `int32(code) * int32(weight)` over (taps, C4) with weights packed
(O/16, KH, KW, C4/4, 16, 4): for one tap and one group of 4 input channels, 4 adjacent output channels' weights
are 16 contiguous bytes, and a pixel's 4 activation codes are one 32-bit word. A thread therefore owns 4
adjacent output channels (common.Tile(adjacent=True)) and each step of 4 input channels is one tensorized
4 x 4 block: one activation word, four weight words, four `__dp4a`. Layers with at most 16 output pixels (dense layers at small batch: a 4096-wide GEMV has only 1024 channel quads, too few threads to keep the
GPU's memory busy) also split the reduction over threads and add the slices across them (common.split_k_gemm).

`__dp4a` multiplies signed by signed or unsigned by unsigned bytes, never mixed, and the kernel's codes are
unsigned (u8, up to 255) where the target has no signed dot (CUDA among them), against signed weights. The
u8 form is made exact with the unsigned instruction: with w' = w + 128 (the weight byte XOR 0x80),
sum a w = sum a w' - 128 sum a, where sum a is one more `__dp4a` against 0x01010101 shared by the 4 channels;
the arithmetic is modulo 2^32 and the true sum fits int32 (int8.supports checks the bound), so it is exact.
Codes already signed (s8, kernels built with `signed_act`) take the signed instruction directly.

Tensor cores: TVM 0.27 registers int8 `mma` (m16n8k32, `mma_i8i8i32`, with `ldmatrix`) and `wmma` 16x16x16
s8 x s8 intrinsics only; the u8 codes need u8 x s8 (which PTX has and TVM does not register), and the
intrinsics want 16/32-wide K tiles in their fragment layouts where this kernel's K is (taps, C4) with C4 a
multiple of 4 — see the module README of cuda/rules for what that would take.
"""

from __future__ import annotations

from tvm import tirx
from tvm.s_tir import Schedule, TensorIntrin
from tvm.script import tirx as T

from ...kernels.encoder import has_block
from .common import (Tile, bind_remaining, inline, reduce_across_threads, split_k_gemm, split_reduction,
                     stage_shared, tile_gemm, wants_split_k)

CHUNK = 8  # groups of 4 input channels staged in shared memory per step
SPLIT_K_LANES = 8  # quads of channels per block (threadIdx.x): 32 channels, so 4096 channels make 128 blocks
QUAD = 4  # output channels per thread, and input channels per `__dp4a`
FLIP = 0x80808080  # XOR of a word of four s8 weights: the same weights + 128 as u8


def _intrin(code_dtype: str, code_scope: str = "shared") -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    """(description, implementation) of C[q] += sum_k A[k] * B[q, k] for 4 channels q and 4 k, C in registers,
    the codes A staged in shared memory (or read from global memory)."""

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((QUAD,), code_dtype, offset_factor=QUAD, scope=code_scope),
        B: T.Buffer((QUAD, QUAD), "int8", offset_factor=QUAD * QUAD),
        C: T.Buffer((QUAD,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:QUAD], A[0:QUAD], B[0:QUAD, 0:QUAD])
            T.writes(C[0:QUAD])
            for q in T.unroll(QUAD):  # as common.tile_gemm leaves a thread's channels
                for k in T.serial(QUAD):
                    with T.sblock("update"):
                        vq, vk = T.axis.remap("SR", [q, k])
                        C[vq] = C[vq] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vq, vk])

    if code_dtype == "int8":

        @T.macro
        def accumulate(A, B, C):  # signed codes, signed weights: the signed instruction
            a = T.reinterpret(A.vload([0], "int8x4"), dtype="int32")
            for q in T.unroll(QUAD):
                w = T.reinterpret(B.vload([q, 0], "int8x4"), dtype="int32")
                C[q] = T.call_pure_extern("int32", "__dp4a", a, w, C[q])

    else:

        @T.macro
        def accumulate(A, B, C):  # u8 codes: the unsigned instruction on w + 128, minus 128 * sum a
            a = T.reinterpret(A.vload([0], "uint8x4"), dtype="uint32")
            asum = T.call_pure_extern("uint32", "__dp4a", a, T.uint32(0x01010101), T.uint32(0))
            for q in T.unroll(QUAD):
                w = T.reinterpret(B.vload([q, 0], "int8x4"), dtype="uint32") ^ T.uint32(FLIP)
                C[q] = T.Cast("int32", T.call_pure_extern("uint32", "__dp4a", a, w, T.Cast("uint32", C[q]) - asum * T.uint32(128)))

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((QUAD,), code_dtype, offset_factor=QUAD, scope=code_scope),
        B: T.Buffer((QUAD, QUAD), "int8", offset_factor=QUAD * QUAD),
        C: T.Buffer((QUAD,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:QUAD], A[0:QUAD], B[0:QUAD, 0:QUAD])
            T.writes(C[0:QUAD])
            accumulate(A, B, C)

    return desc, impl


INTRINS = {(dtype, scope): f"tvmquant_cuda_dp4a_4x4_{dtype}_{scope}"
           for dtype in ("uint8", "int8") for scope in ("shared", "global")}
for (_dtype, _scope), _name in INTRINS.items():
    TensorIntrin.register(_name, *_intrin(_dtype, _scope), override=True)


def schedule(sch: Schedule) -> None:
    """Codes, channel sums and the rescale as their own kernels; the dot tiled over output pixels and
    channels (tiled_dot), or for layers with few output pixels (dense layers at small batch, where pixels x
    channels leave most of the GPU idle) its reduction split over threads as well (split_k_dot); each
    4 x 4 step one tensorized `__dp4a` block, the integer epilogue on the registers."""
    inline(sch, "quantize")
    dot = sch.get_sblock("dot")
    codes = str(sch.get(sch.get_sblock("act_codes")).writes[0].source.dtype)
    epilogue = "dot_epilogue" if has_block(sch, "dot_epilogue") else "rescale"
    split_k = wants_split_k(sch, dot, channel_axis=3, split=2, unit=QUAD)
    (split_k_dot if split_k else tiled_dot)(sch, dot, epilogue, codes)
    if split_k and has_block(sch, "channel_sum"):
        reduce_across_threads(sch, sch.get_sblock("channel_sum"))
    bind_remaining(sch)


def tiled_dot(sch: Schedule, dot, epilogue: str, codes: str) -> None:
    """4 adjacent channels x 1 pixel per thread (common.tile_gemm), the codes of CHUNK channel groups staged in
    shared memory per step."""
    tiled = tile_gemm(sch, dot, channel_axis=3, tile=Tile(pixels=8, channels=32, per_thread=QUAD, adjacent=True))
    r, s, c = tiled.reduction
    groups, k = sch.split(c, [None, QUAD])
    outer, inner = split_reduction(sch, groups, CHUNK)
    sch.reorder(outer, r, s, inner, tiled.registers, k)
    stage_shared(sch, dot, "act_codes", outer, tiled.threads)
    sch.set_scope(dot, 0, "local")
    sch.decompose_reduction(dot, outer)
    sch.reverse_compute_at(sch.get_sblock(epilogue), tiled.thread_channels)
    sch.tensorize(tiled.registers, INTRINS[codes, "shared"])


def split_k_dot(sch: Schedule, dot, epilogue: str, codes: str) -> None:
    """common.split_k_gemm over the channel groups, 4 adjacent channels per thread, the codes read from global
    memory (every lane reads the same word: one broadcast load)."""
    c = sch.get_loops(dot)[-1]
    sch.split(c, [None, QUAD])  # reduction loops now r, s, groups, k: split the groups, keep k innermost
    loops = split_k_gemm(sch, dot, channel_axis=3, split=2, inner=1, epilogue=epilogue, per_thread=QUAD,
                         lanes=SPLIT_K_LANES)
    sch.tensorize(loops.registers, INTRINS[codes, "global"])
