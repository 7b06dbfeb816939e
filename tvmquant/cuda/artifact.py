"""The CUDA artifact: one shared library whose CUDA module holds a cubin, so a GPU machine needs only the driver.

Without a GPU driver here, TVM's codegen returns a placeholder CUDA module that serializes exactly like the
real one (kind "cuda": format, function table, code) but with the CUDA *source* as code and format "cuda",
which a GPU machine would have to compile at load time. `export` packs the module tree itself (TVM's
`fpack_imports` hook): it serializes the imports as TVM does, swaps every CUDA module's (format, code) for
("cubin", NVRTC's binary of that source), and embeds the result under TVM's blob symbol in a C file that the
host compiler links with the host code. The loader on the GPU machine (`ffi.Module.load_from_bytes.cuda`) then
reads a cubin module. On a machine whose TVM links the CUDA runtime, the codegen has already compiled it
(format cubin/ptx/fatbin) and the module is left as it is.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

import tvm

from . import toolkit

_U64 = struct.Struct("<Q")


def _string(text: bytes) -> bytes:
    return _U64.pack(len(text)) + text


def cuda_modules(module: tvm.runtime.Module) -> list[tvm.runtime.Module]:
    """Every module of kind "cuda" in the import tree."""
    found, stack = [], [module]
    while stack:
        m = stack.pop()
        if m.kind == "cuda":
            found.append(m)
        stack.extend(m.imports)
    return found


def swap_binaries(blob: bytes, binaries: dict[bytes, bytes]) -> bytes:
    """The serialized import tree `blob` with each CUDA module whose code is a key of `binaries` (source) turned
    into a cubin module holding the value. Layout (TVM 0.27): u64 total length, then per module its kind and
    payload as length-prefixed strings; a CUDA payload is format, function table, code (code last)."""
    out, pos = bytearray(), 0
    header = _string(b"cuda")
    while (at := blob.find(header, pos)) != -1:
        start = at + len(header)
        (length,) = _U64.unpack_from(blob, start)
        payload = blob[start + 8 : start + 8 + length]
        source = next((s for s in binaries if payload.startswith(_string(b"cuda")) and payload.endswith(_string(s))), None)
        if source is None:
            out += blob[pos:start]
            pos = start
            continue
        table = payload[len(_string(b"cuda")) : len(payload) - len(_string(source))]
        new = _string(b"cubin") + table + _string(binaries[source])
        out += blob[pos:start] + _U64.pack(len(new)) + new
        pos = start + 8 + length
    out += blob[pos:]
    if len(out) != len(blob):
        out[:8] = _U64.pack(len(out) - 8)
    return bytes(out)


def _c_array(symbol: str, data: bytes) -> str:
    rows = ",\n".join(",".join(f"0x{b:02x}" for b in data[i : i + 24]) for i in range(0, len(data), 24))
    return (f'#ifdef __cplusplus\nextern "C" {{\n#endif\nextern const unsigned char {symbol}[];\n'
            f"const unsigned char {symbol}[{len(data)}] = {{\n{rows}\n}};\n#ifdef __cplusplus\n}}\n#endif\n")


def pack_with_cubins(arch: str) -> Callable:
    """An export_library `fpack_imports` that embeds the imports with every CUDA source module compiled to a
    cubin for `arch` (see the module docstring)."""

    def fpack(module: tvm.runtime.Module, is_system_lib: bool, prefix: str, workspace_dir: str) -> str:
        sources = {m.inspect_source("cuda").encode() for m in cuda_modules(module) if m.inspect_source("cuda")}
        binaries = {s: toolkit.compile_source(s.decode(), arch) for s in sources}
        blob = tvm.get_global_func("runtime.ModulePackImportsToTensor")(module).numpy().tobytes()
        symbol = prefix + tvm.get_global_func("runtime.ModuleImportsBlobName")()
        path = os.path.join(workspace_dir, f"{prefix}devc.c")
        Path(path).write_text(_c_array(symbol, swap_binaries(blob, binaries)))
        return path

    return fpack


def export(executable: tvm.relax.VMExecutable, path: Path, arch: str) -> None:
    """Write the shared library with cubins inside (atomically: a failed compile leaves nothing behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial.so")
    try:
        executable.export_library(str(tmp), fpack_imports=pack_with_cubins(arch))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def embedded_cubins(path: Path) -> list[bytes]:
    """The cubins (ELF images) inside an exported library's import blob: what a GPU machine will load."""
    data = path.read_bytes()
    header, found, pos = _string(b"cuda"), [], 0
    while (at := data.find(header, pos)) != -1:
        start = at + len(header) + 8
        if data.startswith(_string(b"cubin"), start):
            fmt_end = start + len(_string(b"cubin"))
            (length,) = _U64.unpack_from(data, at + len(header))
            end = at + len(header) + 8 + length
            elf = data.find(b"\x7fELF", fmt_end, end)
            if elf != -1:
                found.append(data[elf:end])
        pos = at + 1
    return found
