"""The kernel-family contract: what a family gives the Relax pass and the scheduler, stated as a Protocol.

A family (one module under kernels/, registered in registry.py) provides

    supports(layer, target) -> str | None     why it cannot run this layer (None: it can)
    compute(layer, geometry, target) -> KernelCall   the UNSCHEDULED PrimFunc of one layer instance + constants
    rules                                     dlight-style schedule rules, one per target key it knows

Compute and schedule are separate trees (as in BitBLAS): compute depends on the layer and its geometry, and on
the target only where the arithmetic itself differs (int8's activation encoding follows the dot instruction:
u8 for VNNI, s8 for sdot), so the PrimFunc (a tuning workload) is the same whoever schedules it. A target may
also bring rules for families from its own side (`TargetAdapter.family_rules`: CUDA's live in cuda/rules/);
`rule_table` merges the two, and a family with no rule in the table is not chosen (registry.choose). A rule's
`apply(func, target, tunable)` returns None where it does not apply (another family's kernel, a target it has
no schedule for); `ApplyDefaultSchedule` (passes/default_schedule.py) applies the first rule that does.

Every kernel's signature is (x, act_inv_scale, act_zero_point, *weights, out): the activation quantizer is a
runtime input (`actquant`), so re-calibration or QAT leaves the workload unchanged. `io` states the layout and
dtype of x and out of `compute`'s kernel: float32 NCHW (`FLOAT_NCHW`) for every family. A family with an
`encoder` (kernels/encoder.py: bitserial, int8) can also give the layer as (encoder, kernel whose x is codes):
`compute_encoded`, whose `Encoded.io` names the codes' layout; passes/codes_between_layers.py uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
from tvm import tirx
from tvm.s_tir import Schedule
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

from .. import actquant
from ..scheme import LayerScheme
from .geometry import ConvGeometry

if TYPE_CHECKING:
    from .encoder import Encoded, EncoderRule, EncoderSpec

FAMILY_ATTR = "tvmquant.family"  # PrimFunc attributes set by the pass: which family, which layer
LAYER_ATTR = "tvmquant.layer"
NOTE_ATTR = "tvmquant.note"  # why the preferred or requested family was not taken


@dataclass(frozen=True)
class TensorIO:
    """Layout and dtype of a kernel's activation input and output."""

    layout: str
    dtype: str


FLOAT_NCHW = TensorIO("NCHW", "float32")


@dataclass
class KernelCall:
    """call_tir(prim, [x, *consts]) -> (N, O, OH, OW); consts = the activation quantizer's two operands, then
    the weights (what the artifact stores for the layer)."""

    prim: tirx.PrimFunc
    act: list[np.ndarray]
    weights: list[np.ndarray]

    @property
    def consts(self) -> list[np.ndarray]:
        return [*self.act, *self.weights]

    @property
    def const_bytes(self) -> int:
        return sum(w.nbytes for w in self.weights)


def kernel_call(prim: tirx.PrimFunc, layer: LayerScheme, weights: list[np.ndarray]) -> KernelCall:
    """A family's compute result: `prim` built with actquant.te_placeholders() right after x."""
    return KernelCall(prim, actquant.operands(layer.act), weights)


ScheduleFn = Callable[[tirx.PrimFunc, Target], tirx.PrimFunc]


class FamilyRule(ScheduleRule):
    """A family's default schedule for targets with one key (e.g. "cpu"): applies to that family's kernels only."""

    def __init__(self, family: str, key: str, schedule: ScheduleFn):
        self.family, self.key, self.schedule = family, key, schedule

    def applies(self, func: tirx.PrimFunc, target: Target) -> bool:
        return func.attrs is not None and func.attrs.get(FAMILY_ATTR) == self.family and self.key in target.keys

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.applies(func, target):
            return None
        return Schedule(self.schedule(func, target))


@runtime_checkable
class KernelFamily(Protocol):
    """What registry.py registers and the pass, the scheduler and `tune` use."""

    name: str
    tunable: bool  # whether MetaSchedule tunes its kernels (else they always take the default schedule)
    io: TensorIO

    def supports(self, layer: LayerScheme, target: Target) -> str | None: ...

    def compute(self, layer: LayerScheme, geometry: ConvGeometry, target: Target | None = None) -> KernelCall: ...

    def rule_for(self, target: Target) -> FamilyRule | None: ...

    def compute_encoded(self, layer: LayerScheme, geometry: ConvGeometry, target: Target | None = None) -> Encoded | None:
        """The layer as (encoder, kernel on codes), or None: this family reads float NCHW only."""

    def encoder_rule_for(self, target: Target) -> EncoderRule | None:
        """The encoder's default schedule on `target` (None: no encoder, or none for this target)."""

    @property
    def rules(self) -> list[FamilyRule]: ...


@dataclass(frozen=True)
class Family:
    """The standard KernelFamily: a kernel module's functions plus one schedule function per target key.
    `targeted`: `build` takes the target as a third argument (its arithmetic depends on the ISA).
    `grouped`: its compute has a grouped-conv form; a family without one refuses grouped layers here.
    `encoder`: its activation encoder as a PrimFunc of its own (kernels/encoder.py; codes between layers)."""

    name: str
    tunable: bool
    check: Callable[[LayerScheme], str | None]
    build: Callable[..., KernelCall]
    schedules: Mapping[str, ScheduleFn] = field(default_factory=dict)
    io: TensorIO = FLOAT_NCHW
    targeted: bool = False
    grouped: bool = False
    encoder: EncoderSpec | None = None

    def supports(self, layer: LayerScheme, target: Target) -> str | None:
        if layer.groups != 1 and not self.grouped:
            return f"grouped convolution (groups={layer.groups})"
        return self.check(layer)

    def compute(self, layer: LayerScheme, geometry: ConvGeometry, target: Target | None = None) -> KernelCall:
        call = self.build(layer, geometry, target) if self.targeted else self.build(layer, geometry)
        return KernelCall(call.prim.with_attr(FAMILY_ATTR, self.name), call.act, call.weights)

    @property
    def rules(self) -> list[FamilyRule]:
        return [FamilyRule(self.name, key, fn) for key, fn in self.schedules.items()]

    def rule_for(self, target: Target) -> FamilyRule | None:
        return next((rule for rule in self.rules if rule.key in target.keys), None)

    def compute_encoded(self, layer: LayerScheme, geometry: ConvGeometry, target: Target | None = None) -> Encoded | None:
        if self.encoder is None:
            return None
        enc = self.encoder.build(layer, geometry, target) if self.targeted else self.encoder.build(layer, geometry)
        kernel = KernelCall(enc.kernel.prim.with_attr(FAMILY_ATTR, self.name), enc.kernel.act, enc.kernel.weights)
        return replace(enc, kernel=kernel)

    def encoder_rule_for(self, target: Target) -> EncoderRule | None:
        return None if self.encoder is None else self.encoder.rule_for(self.name, target)


def rule_table(families: Iterable[KernelFamily], target: Target,
               brought: Mapping[str, ScheduleRule] | None = None) -> dict[str, ScheduleRule]:
    """Family name -> its default schedule rule on `target`: the family's own, else the one the target brings
    (`brought`, from the target's adapter). Families missing from the table cannot run there."""
    table = {f.name: rule for f in families if (rule := f.rule_for(target)) is not None}
    return {**table, **{name: rule for name, rule in (brought or {}).items() if name not in table}}


def scheduled(family: KernelFamily, layer: LayerScheme, geometry: ConvGeometry, target: Target) -> KernelCall:
    """compute + the family's default schedule for `target`: one ready kernel (kernel tests, benchmarks)."""
    call = family.compute(layer, geometry, target)
    rule = family.rule_for(target)
    if rule is None:
        raise ValueError(f"{family.name} has no schedule rule for target keys {list(target.keys)}")
    return KernelCall(rule.apply(call.prim, target, False).mod["main"], call.act, call.weights)


def layer_geometry(layer: LayerScheme, shape: tuple[int, int, int, int]) -> ConvGeometry:
    """The conv geometry of `layer` on an NCHW input `shape` (linear layers: (rows, K, 1, 1))."""
    w = layer.weight
    kernel = tuple(w.codes.shape[-2:]) if layer.op == "conv2d" else (1, 1)
    return ConvGeometry(*shape, w.out_channels, kernel, layer.stride, layer.padding, conv_groups=layer.groups)
