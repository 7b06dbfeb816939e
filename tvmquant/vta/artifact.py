"""The VTA part of an artifact: real bytes plus a manifest another VTA implementation can replay.

`OUT.so` is the host part (Relax VM, LLVM); beside it `OUT.so.vta/` holds, per VTA layer, the instruction stream
(16-byte little-endian words), the micro-op buffer (4-byte words) and the DRAM images of its weights and
accumulator constants, and `manifest.json` says where each goes (docs/VTA.md describes the format). Reading
it back decodes the instruction words, so what runs is what was written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import UserError
from .arith import HostQuant
from .config import VtaConfig, from_dict, to_dict
from .isa import decode_stream, encode_stream
from .lower import Geometry, Tiling
from .runtime import VtaProgram
from .simulator import PAGE

FORMAT = "tvmquant-vta/1"


def folder_of(artifact: Path) -> Path:
    """`m.so` -> `m.so.vta/`, beside the sidecars `m.so.json` and `m.so.npz`."""
    return artifact.with_name(artifact.name + ".vta")


def _elements(config: VtaConfig) -> dict[str, str]:
    b, i, w = config.block, config.inp_bits, config.wgt_bits
    return {"uop": "uint32 micro-op (dst | src | wgt, isa.uop_layout)",
            "wgt": f"int{w} {b}x{b} block, OIHW{b}o{b}i, packed LSB-first",
            "acc": f"int32 x{b}: bias rows then shift rows, one per output block",
            "inp": f"int{i} x{b}, NCHW1n{b}c, packed LSB-first (dense: 1 x K x 1 x batch)",
            "out": f"int{i} x{b}, NCHW1n{b}c, packed LSB-first"}


def write(artifact: Path, programs: dict[str, VtaProgram], config: VtaConfig) -> Path:
    """Write OUT.vta/ (replacing an old one atomically) and return it."""
    folder = folder_of(artifact)
    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    elements = _elements(config)
    layers = []
    for name, prog in programs.items():
        insn = encode_stream(config, prog.insns)
        insn_addr = prog.plan["out"][0] + max(1, -(-prog.plan["out"][1] // PAGE)) * PAGE
        (tmp / f"{name}.insn.bin").write_bytes(insn)
        buffers = []
        for mem, (addr, size) in prog.plan.items():
            entry = {"name": mem, "element": elements[mem], "element_bytes": config.elem_bytes(mem),
                     "address": addr, "bytes": size}
            if mem in prog.images:
                (tmp / f"{name}.{mem}.bin").write_bytes(prog.images[mem])
                entry["file"] = f"{name}.{mem}.bin"
            else:
                entry["role"] = "input" if mem == "inp" else "output"
            buffers.append(entry)
        host = prog.host
        layers.append({
            "name": name, "packed_function": f"tvmquant.vta.{name}", "op": host.op,
            "instructions": {"file": f"{name}.insn.bin", "count": len(prog.insns), "address": insn_addr},
            "buffers": buffers, "geometry": vars(prog.geometry), "tiling": vars(prog.tiling),
            "host": {"act_inv_scale": float(host.act_inv_scale), "act_zero_point": host.act_zero_point,
                     "act_qmax": host.act_qmax, "step": [float(s) for s in host.step]},
        })
    manifest = {"format": FORMAT, "host_library": artifact.name, "config": to_dict(config), "layers": layers}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def read(artifact: Path) -> tuple[VtaConfig, dict[str, VtaProgram]]:
    folder = folder_of(artifact)
    path = folder / "manifest.json"
    if not path.is_file():
        raise UserError(f"{artifact} has no VTA program folder {folder.name}/ beside it (written by compile --target vta)")
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise UserError(f"{path}: unknown format {manifest.get('format')!r} (expected {FORMAT})")
        config = from_dict(manifest["config"], str(path))
        programs = {}
        for entry in manifest["layers"]:
            name = entry["name"]
            insns = decode_stream(config, (folder / entry["instructions"]["file"]).read_bytes())
            if len(insns) != entry["instructions"]["count"]:
                raise UserError(f"{path}: layer {name} has {len(insns)} instructions, manifest says {entry['instructions']['count']}")
            plan = {b["name"]: (b["address"], b["bytes"]) for b in entry["buffers"]}
            images = {b["name"]: (folder / b["file"]).read_bytes() for b in entry["buffers"] if "file" in b}
            h = entry["host"]
            host = HostQuant(entry["op"], np.float32(h["act_inv_scale"]), h["act_zero_point"], h["act_qmax"],
                             np.asarray(h["step"], np.float32))
            programs[name] = VtaProgram(name, config, Geometry(**entry["geometry"]), Tiling(**entry["tiling"]),
                                        insns, plan, images, host)
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise UserError(f"{path}: damaged VTA manifest or program file: {exc}") from exc
    return config, programs
