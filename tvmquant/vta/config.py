"""A VTA hardware configuration (`vta_config.json`), validated against the rules in shared/VTA.md.

The fields are apache/tvm-vta's (widths and buffer sizes as log2) plus two of ours that the cycle model needs:
HW_FREQ_MHZ (the core clock) and DMA_BYTES_PER_CYCLE (the AXI port's bytes per core cycle). A configuration
that `hw_spec.h` could not express (a micro-op over 32 bits, GEMM loop factors over 64 bits, ...) is refused
with a one-line error naming the rule, because a program for it could not be encoded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

FIELDS = ("TARGET", "HW_VER", "LOG_INP_WIDTH", "LOG_WGT_WIDTH", "LOG_ACC_WIDTH", "LOG_BATCH", "LOG_BLOCK",
          "LOG_UOP_BUFF_SIZE", "LOG_INP_BUFF_SIZE", "LOG_WGT_BUFF_SIZE", "LOG_ACC_BUFF_SIZE")
INT_FIELDS = FIELDS[2:]
LOOP_ITER_WIDTH = 14  # hw_spec.h VTA_LOOP_ITER_WIDTH
SRAM_ADDR_WIDTH = 16  # VTA_MEMOP_SRAM_ADDR_BIT_WIDTH


@dataclass(frozen=True)
class VtaConfig:
    """One VTA core. Widths in bits, depths in elements (an element is one BATCH x BLOCK vector or matrix)."""

    target: str
    hw_ver: str
    log_inp_width: int
    log_wgt_width: int
    log_acc_width: int
    log_batch: int
    log_block: int
    log_uop_buff_size: int
    log_inp_buff_size: int
    log_wgt_buff_size: int
    log_acc_buff_size: int
    freq_mhz: float = 100.0
    dma_bytes_per_cycle: float = 8.0
    name: str = "vta"

    @property
    def inp_bits(self) -> int:
        return 1 << self.log_inp_width

    @property
    def wgt_bits(self) -> int:
        return 1 << self.log_wgt_width

    @property
    def acc_bits(self) -> int:
        return 1 << self.log_acc_width

    @property
    def batch(self) -> int:
        return 1 << self.log_batch

    @property
    def block(self) -> int:
        return 1 << self.log_block

    # element sizes in bytes (hw_spec.h: VTA_*_ELEM_BYTES)
    @property
    def inp_elem_bytes(self) -> int:
        return self.batch * self.block * self.inp_bits // 8

    @property
    def wgt_elem_bytes(self) -> int:
        return self.block * self.block * self.wgt_bits // 8

    @property
    def acc_elem_bytes(self) -> int:
        return self.batch * self.block * self.acc_bits // 8

    @property
    def out_elem_bytes(self) -> int:
        return self.inp_elem_bytes

    uop_elem_bytes = 4

    @property
    def uop_depth(self) -> int:
        return (1 << self.log_uop_buff_size) // self.uop_elem_bytes

    @property
    def inp_depth(self) -> int:
        return (1 << self.log_inp_buff_size) // self.inp_elem_bytes

    @property
    def wgt_depth(self) -> int:
        return (1 << self.log_wgt_buff_size) // self.wgt_elem_bytes

    @property
    def acc_depth(self) -> int:
        return (1 << self.log_acc_buff_size) // self.acc_elem_bytes

    @property
    def log_depths(self) -> dict[str, int]:
        """log2 of each buffer depth: the index widths of micro-ops and instruction fields."""
        return {k: getattr(self, f"{k}_depth").bit_length() - 1 for k in ("uop", "inp", "wgt", "acc")}

    @property
    def label(self) -> str:
        return f"i{self.inp_bits}w{self.wgt_bits}a{self.acc_bits} {self.batch}x{self.block}x{self.block} {self.target} {self.freq_mhz:g} MHz"

    def elem_bytes(self, mem: str) -> int:
        return {"uop": 4, "inp": self.inp_elem_bytes, "wgt": self.wgt_elem_bytes, "acc": self.acc_elem_bytes,
                "out": self.out_elem_bytes}[mem]


def _rules(c: VtaConfig) -> list[tuple[bool, str]]:
    """(holds, rule) pairs; the first that fails is the error."""
    d = c.log_depths if all(getattr(c, f"{k}_depth") >= 1 for k in ("uop", "inp", "wgt", "acc")) else None
    rules = [
        (c.log_acc_width == 5, "LOG_ACC_WIDTH must be 5: the accumulators (and the ALU's SHR/ADD/MIN/MAX) are int32"),
        (1 <= c.log_inp_width <= 3, "LOG_INP_WIDTH must be 1..3 (2- to 8-bit activations)"),
        (0 <= c.log_wgt_width <= 3, "LOG_WGT_WIDTH must be 0..3 (1- to 8-bit weights)"),
        (c.log_batch == 0, "LOG_BATCH must be 0: the lowering maps batch onto the GEMM loops, not the core"),
        (2 <= c.log_block <= 6, "LOG_BLOCK must be 2..6"),
        (c.inp_bits * c.batch * c.block % 8 == 0 and c.wgt_bits * c.block * c.block % 8 == 0,
         "an input or weight element must be a whole number of bytes"),
        (d is not None, "every buffer must hold at least one element (LOG_*_BUFF_SIZE too small)"),
    ]
    if d is not None:
        rules += [
            (d["acc"] + max(d["acc"], d["inp"]) + d["wgt"] <= 32,
             f"a micro-op must fit 32 bits: acc {d['acc']} + max(acc, inp) {max(d['acc'], d['inp'])} + wgt {d['wgt']} index bits > 32 (shrink a buffer)"),
            (2 * (d["acc"] + d["inp"] + d["wgt"]) <= 64,
             f"GEMM loop factors must fit 64 bits: 2 x (acc {d['acc']} + inp {d['inp']} + wgt {d['wgt']}) > 64"),
            (d["acc"] <= 11, f"ALU fields need acc depth <= 2^11 (got 2^{d['acc']}): shrink LOG_ACC_BUFF_SIZE"),
            (8 + d["uop"] + d["uop"] + 1 + 2 * LOOP_ITER_WIDTH <= 64,
             f"GEMM uop_bgn/uop_end/iter fields must fit the low 64 bits (uop depth 2^{d['uop']} too big)"),
            (max(d.values()) <= SRAM_ADDR_WIDTH, f"buffer depths must be addressable by the {SRAM_ADDR_WIDTH}-bit sram_base"),
        ]
    rules += [(c.freq_mhz > 0, "HW_FREQ_MHZ must be positive"),
              (c.dma_bytes_per_cycle > 0, "DMA_BYTES_PER_CYCLE must be positive")]
    return rules


def validate(config: VtaConfig, where: str = "vta config") -> VtaConfig:
    for holds, rule in _rules(config):
        if not holds:
            raise UserError(f"{where}: {rule}")
    return config


def from_dict(data: dict, where: str = "vta config", name: str = "vta") -> VtaConfig:
    """Build and validate; missing or non-integer fields are errors."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object")
    missing = [f for f in FIELDS if f not in data]
    if missing:
        raise UserError(f"{where}: missing field(s) {', '.join(missing)}")
    for f in INT_FIELDS:
        if not isinstance(data[f], int) or isinstance(data[f], bool):
            raise UserError(f"{where}: {f} must be an integer, got {data[f]!r}")
    extras = {}
    for key, attr in (("HW_FREQ_MHZ", "freq_mhz"), ("DMA_BYTES_PER_CYCLE", "dma_bytes_per_cycle")):
        if key in data:
            if not isinstance(data[key], (int, float)) or isinstance(data[key], bool):
                raise UserError(f"{where}: {key} must be a number, got {data[key]!r}")
            extras[attr] = float(data[key])
    config = VtaConfig(str(data["TARGET"]), str(data["HW_VER"]), *(data[f] for f in INT_FIELDS), name=name, **extras)
    return validate(config, where)


def to_dict(config: VtaConfig) -> dict:
    data = {"TARGET": config.target, "HW_VER": config.hw_ver}
    data.update({f: getattr(config, f.lower()) for f in INT_FIELDS})
    data.update(HW_FREQ_MHZ=config.freq_mhz, DMA_BYTES_PER_CYCLE=config.dma_bytes_per_cycle)
    return data


def load_config(path: str | Path) -> VtaConfig:
    """A vta_config.json by path, or by short name (`w4` -> targets/vta_config_w4.json, `default`)."""
    from ..target import TARGETS_DIR

    folder = TARGETS_DIR
    text = str(path)
    if not text.endswith(".json"):
        path = folder / ("vta_config.json" if text in ("default", "") else f"vta_config_{text}.json")
    path = Path(path)
    if not path.is_file():
        known = ", ".join(sorted(p.stem.replace("vta_config_", "") for p in folder.glob("vta_config_*.json")))
        raise UserError(f"VTA config not found: {path} (known: default, {known})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON: {exc}") from exc
    name = "vta" if path.stem == "vta_config" else path.stem.replace("vta_config_", "vta-")
    return from_dict(data, str(path), name)
