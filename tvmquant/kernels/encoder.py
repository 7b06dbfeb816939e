"""Activation encoders: a family's quantize + pad + layout step as a PrimFunc of its own (codes between layers).

A family with an encoder can run a layer as two calls: `encoder(x, act_inv_scale, act_zero_point) -> codes`
(float32 NCHW in; the padded, packed layout the kernel reads out, e.g. bit-planes (N, Hp, abits, words, Wp)
uint64 or u8 NHWC) and the kernel reading those codes where it read x. The encoder is not opaque, so TVM's
FuseOps fuses the elementwise chain in front of it (bias add, ReLU/ReLU6, residual add, reshape) into it: one
pass over the floats that writes codes (1/16 of the bytes at 2 bits) instead of a float tensor the kernel would
read, quantize and pack again. The arithmetic is the kernel's own TE (actquant.te_codes and the family's
padding/packing), so compiled == reference stays bit-exact with the reference unchanged.

After fusion the encoder's PrimFunc is a new function (FuseTIR keeps block names, not attributes), so its
schedule rule recognises it by the family's last encoder block (`EncoderSpec.block`) in a function that is no
layer's kernel, inlines every elementwise producer and hands the schedule to the family.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tvm import te, tirx
from tvm.s_tir import Schedule, ScheduleError
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

from .family import LAYER_ATTR, KernelCall, TensorIO

ENCODER_ATTR = "tvmquant.encoder"  # on an encoder PrimFunc: its family (lost if FuseOps fuses it)
COMM_REDUCE = 3  # relax OpPatternKind.kCommReduce: elementwise / broadcast / injective producers fuse into it


@dataclass
class Encoded:
    """A layer as (encoder, kernel on codes); `io` is the codes' layout and dtype (the kernel's input)."""

    encoder: tirx.PrimFunc
    kernel: KernelCall
    io: TensorIO

    @property
    def codes_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.kernel.prim.params[0].shape)


def float_input(shape: tuple[int, ...]) -> te.Tensor:
    """The encoder's x, with int64 extents as TVM's legalized ops declare theirs: FuseTIR maps a fused
    producer's output buffer and the encoder's x to one buffer and refuses int32 against int64 extents."""
    return te.placeholder(tuple(tirx.IntImm("int64", d) for d in shape), "float32", name="x")


def encoder_func(family: str, x: te.Tensor, inv: te.Tensor, zp: te.Tensor, codes: te.Tensor) -> tirx.PrimFunc:
    """The encoder PrimFunc (x, act_inv_scale, act_zero_point) -> codes, fusable with its producers."""
    prim = te.create_prim_func([x, inv, zp, codes])
    return prim.with_attr(ENCODER_ATTR, family).with_attr("op_pattern", COMM_REDUCE)


EncoderSchedule = Callable[[Schedule, Target], None]


@dataclass(frozen=True)
class EncoderSpec:
    """What a family gives for codes between layers: `build(layer, geometry, target) -> Encoded`, the name
    of the encoder's first block (its quantizer, "quantize") and of its last block (what the rule looks for),
    and one schedule per target key (`schedule(sch, target)` on the encoder with its producers inlined)."""

    build: Callable[..., Encoded]
    block: str
    schedules: Mapping[str, EncoderSchedule] = field(default_factory=dict)
    first: str = "quantize"

    def rule_for(self, family: str, target: Target) -> EncoderRule | None:
        key = next((k for k in self.schedules if k in target.keys), None)
        return None if key is None else EncoderRule(family, key, self)


class EncoderRule(ScheduleRule):
    """The default schedule of a (possibly fused) encoder of one family on targets with one key."""

    def __init__(self, family: str, key: str, spec: EncoderSpec):
        self.family, self.key, self.spec = family, key, spec

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or self.key not in target.keys:
            return None
        if func.attrs is not None and LAYER_ATTR in func.attrs:
            return None  # a layer's kernel (codes off: the encoder's blocks are inside it)
        sch = Schedule(func)
        if not has_block(sch, self.spec.block) or not _inline_producers(sch, self.spec.first):
            return None
        self.spec.schedules[self.key](sch, target)
        return sch


def has_block(sch: Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
    except ScheduleError:
        return False
    return True


def _inline_producers(sch: Schedule, first: str) -> bool:
    """Inline every block before the encoder's first block (the fused elementwise chain) into its consumer;
    False if one cannot be (then the function is left to the generic rules)."""
    root = sch.get_sblock("root")
    for block in sch.get_child_blocks(root):
        if sch.get(block).name_hint == first:
            return True
        try:
            sch.compute_inline(block)
        except ScheduleError:
            return False
    return False
