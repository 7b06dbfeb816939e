"""Loading a `.pt2` someone else made without letting it run code.

`torch.export.load` (torch 2.13) is not safe on untrusted files; reading torch/export/pt2_archive/_package.py,
torch/_export/serde/serialize.py and torch/export/_unlift.py, an archive reaches Python code execution through:

- payload entries flagged `use_pickle` (weights, tensor constants): `torch.load(weights_only=False)`;
- constants named `opaque_obj_*` (`pickle.loads`) and `custom_obj_*` (TorchScript's unpickler);
- the sample inputs, and the legacy `data/weights/<model>.pt` / `serialized_*.pt` formats:
  `torch.load(weights_only=True)`, falling back to `weights_only=False` when that fails;
- `data/aotinductor/`: a compiled shared library that is extracted and loaded;
- symbolic shape strings (`expr_str`, range constraints): `sympy.sympify`, which `eval`s;
- `guards_code`: `exec`ed when the program is turned into a module (`ep.module()`);
- parameter / buffer names: pasted unescaped into the Python source FX generates and `exec`s;
- graph nodes calling file ops (`aten.save`, `aten.from_file`) when the graph runs.

So an untrusted archive is read into memory once (what is checked is what is loaded), checked member by member
against what `torch.export.save` writes, and loaded with every `torch.load` forced to `weights_only=True`.
Anything outside that is refused with a one-line error naming the member and `--trust-model`.
"""

from __future__ import annotations

import io
import json
import logging
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

MAX_ARCHIVE_BYTES = 4 << 30  # read into memory whole; a larger model is beyond what tvmquant targets
MAX_MEMBERS = 100_000
MAX_JSON_BYTES = 256 << 20

_NAME_PART = re.compile(r"[A-Za-z0-9_]+")  # a parameter FQN part: FX writes it into generated source
_FIXED_MEMBERS = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
_MEMBER = re.compile(
    r"models/model\.json|data/sample_inputs/model\.pt|extra/[^/]+"
    r"|data/weights/(model_weights_config\.json|weight_\d+)|data/constants/(model_constants_config\.json|tensor_\d+)"
)
_PAYLOAD = re.compile(r"(weight|tensor)_\d+")
# sympy.sympify evaluates its string (torch writes sympy's srepr: "Mul(Integer(2), Symbol('s7', integer=True))"),
# and guard code is exec'ed: allow only numbers, short quoted symbol names or decimals, operators, known names
_EXPR_TOKEN = re.compile(r"\s+|\d+(\.\d+)?(e-?\d+)?|'[a-z]*\d*(\.\d+)?'|[A-Za-z_][A-Za-z0-9_]*|//|==|!=|<=|>=|[-+*/%(),<>=]")
_EXPR_NAMES = {
    "Add", "Mul", "Pow", "Integer", "Float", "Rational", "Symbol", "Max", "Min", "Abs", "Mod", "PythonMod",
    "FloorDiv", "CeilDiv", "CleanDiv", "IntTrueDiv", "FloatTrueDiv", "ToFloat", "TruncToInt", "TruncToFloat",
    "FloorToInt", "CeilToInt", "RoundToInt", "RoundDecimal", "PowByNatural", "FloatPow", "Identity", "sqrt",
    "floor", "ceiling", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "True", "False", "oo",
    "positive", "integer", "nonnegative", "real", "finite", "precision", "and", "or", "not",
}
# a guard reads input sizes as L['x'].size()[0]: each such read is checked as if it were a symbol
_GUARD_READ = re.compile(r"L(\[(\d+|'[A-Za-z_]\w*')\])+\.(size\(\)\[\d+\]|stride\(\)\[\d+\]|storage_offset\(\))")
_SYMBOL = re.compile(r"[a-z]+\d+|OpaqueUnaryFn_[a-z0-9]+")
_OP = re.compile(r"torch\.ops\.(aten|prims)\.(?!__)(?P<op>\w+)(\.(?!_)\w+)?")
_DENIED_OPS = {"save", "from_file"}  # a graph node would write or map a named file


def load_exported(path: Path, trust: bool = False) -> torch.export.ExportedProgram:
    """An ExportedProgram from `path`; unless `trust`, only after `check_archive` passes (see module doc)."""
    if trust:
        with quiet_loggers("torch.export", "torch._export"):
            return torch.export.load(path)
    size = path.stat().st_size
    if size > MAX_ARCHIVE_BYTES:
        raise UserError(f"{path} is {size >> 20} MiB, above the {MAX_ARCHIVE_BYTES >> 30} GiB limit for an untrusted model")
    data = path.read_bytes()
    check_archive(data, str(path))
    from torch.export.pt2_archive._package import load_pt2  # torch.export.load minus its legacy-format fallback

    with quiet_loggers("torch.export", "torch._export"), _weights_only_torch_load():
        contents = load_pt2(io.BytesIO(data))
    if "model" not in contents.exported_programs:
        raise UserError(f"{path} holds no exported program 'model'")
    return contents.exported_programs["model"]


def check_archive(data: bytes, shown: str) -> None:
    """Refuse (UserError) a `.pt2` whose loading could run code, write files, or exhaust memory."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise _not_export(shown, str(exc)) from None
    prefix = _check_members(infos, len(data), shown)
    members = {info.filename[len(prefix):]: info for info in infos}
    missing = sorted({"archive_format", "models/model.json", "data/sample_inputs/model.pt"} - set(members))
    if missing:
        raise _not_export(shown, f"no {missing[0]}")

    def read(name: str) -> bytes:
        return archive.read(members[name])

    if read("archive_format").strip() != b"pt2":
        raise _not_export(shown, "archive_format is not 'pt2'")
    for kind in ("weights", "constants"):
        config = f"data/{kind}/model_{kind}_config.json"
        if config in members:
            _check_payload_config(_json(read(config), config, shown), kind, members, shown)
    _check_program(_json(read("models/model.json"), "models/model.json", shown), shown)
    _check_sample_inputs(read("data/sample_inputs/model.pt"), shown)


def _not_export(shown: str, why: str) -> UserError:
    return UserError(f"{shown} is not a readable torch.export archive (.pt2 written by torch.export.save): {why}")


def _refuse(shown: str, what: str) -> UserError:
    return UserError(f"{shown}: refused, {what} (pass --trust-model only for archives you made yourself)")


def _check_members(infos: list[zipfile.ZipInfo], archive_bytes: int, shown: str) -> str:
    """Names, sizes and compression; returns the one top-level folder torch puts every member under."""
    if not infos or len(infos) > MAX_MEMBERS:
        raise _not_export(shown, f"{len(infos)} members")
    prefixes, total = set(), 0
    for info in infos:
        name = info.filename
        parts = name.split("/")
        if name.startswith("/") or "\\" in name or "\0" in name or ":" in parts[0] or ".." in parts or "" in parts[:-1]:
            raise _refuse(shown, f"member name {name!r} points outside the archive")
        if info.flag_bits & 0x1:
            raise _refuse(shown, f"member {name!r} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise _refuse(shown, f"member {name!r} is compressed (declared {info.file_size} bytes); torch.export.save stores members uncompressed")
        total += info.file_size
        if info.file_size > archive_bytes or total > archive_bytes:
            raise _refuse(shown, f"member {name!r} declares {info.file_size} bytes, more than the archive holds")
        prefixes.add(parts[0])
    if len(prefixes) != 1 or any("/" not in info.filename for info in infos):
        raise _not_export(shown, "no single top folder")
    prefix = prefixes.pop() + "/"
    for info in infos:
        name = info.filename[len(prefix):]
        if name.endswith("/") or name in _FIXED_MEMBERS:
            continue
        if not _MEMBER.fullmatch(name):
            raise _refuse(shown, f"member {name!r} is not part of a plain torch.export archive (pickled, legacy or compiled code)")
    return prefix


def _json(raw: bytes, name: str, shown: str) -> Any:
    if len(raw) > MAX_JSON_BYTES:
        raise _refuse(shown, f"{name} is {len(raw) >> 20} MiB")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{shown}: {name} is not valid JSON: {exc}") from None


def _check_payload_config(config: Any, kind: str, members: dict[str, zipfile.ZipInfo], shown: str) -> None:
    """Every weight/constant must be a raw tensor record whose declared shape fits its bytes."""
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise UserError(f"{shown}: the {kind} config has no 'config' table")
    for fqn, meta in entries.items():
        _check_name(fqn, shown)
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise _refuse(shown, f"{kind} entry {fqn!r} is pickled, and unpickling can run code")
        path_name = meta.get("path_name")
        if not isinstance(path_name, str) or not _PAYLOAD.fullmatch(path_name):
            raise _refuse(shown, f"{kind} entry {fqn!r} is stored as {path_name!r}, not as a raw tensor")
        record = f"data/{kind}/{path_name}"
        if record not in members:
            raise UserError(f"{shown}: {kind} entry {fqn!r} has no member {record}")
        numel = _numel(meta.get("tensor_meta"), fqn, shown)
        if members[record].file_size == 0 and numel > 0:  # torch would allocate the declared shape as zeros
            raise _refuse(shown, f"{kind} entry {fqn!r} declares {numel} elements but stores none")


def _numel(tensor_meta: Any, fqn: str, shown: str) -> int:
    sizes = tensor_meta.get("sizes") if isinstance(tensor_meta, dict) else None
    if not isinstance(sizes, list) or not all(isinstance(s, dict) and isinstance(s.get("as_int"), int) and s["as_int"] >= 0 for s in sizes):
        raise _refuse(shown, f"entry {fqn!r} has no static shape")
    numel = 1
    for s in sizes:
        numel *= s["as_int"]
    return numel


def _check_name(name: Any, shown: str) -> None:
    if not isinstance(name, str) or not all(_NAME_PART.fullmatch(part) for part in name.split(".")):
        raise _refuse(shown, f"name {name!r} is not a dotted identifier")


def _check_program(program: Any, shown: str) -> None:
    """The serialized graph: operators, names, symbolic expressions and guards (see module doc)."""
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise UserError(f"{shown}: models/model.json is not a serialized ExportedProgram")
    for guard in program.get("guards_code") or []:  # exec'ed as Python by ep.module()
        _check_expr(_GUARD_READ.sub("s0", guard) if isinstance(guard, str) else guard, shown)
    for key in program.get("range_constraints") or {}:
        _check_expr(key, shown)
    module = program["graph_module"]
    for value in _leaves(module.get("signature")):
        if isinstance(value, str):
            _check_name(value, shown)
    for entry in module.get("module_call_graph") or []:
        if isinstance(entry, dict) and entry.get("fqn"):
            _check_name(entry["fqn"], shown)
    for key, value in _items(program):
        if key == "expr_str":
            _check_expr(value, shown)
        elif key == "target":
            _check_target(value, shown)
        elif key in ("as_graph", "as_custom_obj", "as_custom_objs"):
            raise _refuse(shown, "the graph has subgraphs or script objects (higher-order operators, torchbind)")


def _check_target(target: Any, shown: str) -> None:
    from torch._export.serde.serialize import _SYM_OPS  # operator.add, math.trunc, torch.sym_max, ...

    op = _OP.fullmatch(target) if isinstance(target, str) else None
    if op is not None and op.group("op") not in _DENIED_OPS:
        return
    if target not in {f"{fn.__module__}.{fn.__name__}" for fn in _SYM_OPS}:
        raise _refuse(shown, f"the graph calls {str(target)[:80]!r}; only aten/prims operators are accepted")


def _check_expr(text: Any, shown: str) -> None:
    if not isinstance(text, str) or len(text) > 10_000:
        raise _refuse(shown, "a symbolic shape expression is not a short string")
    pos = 0
    while pos < len(text):
        token = _EXPR_TOKEN.match(text, pos)
        if token is None or (token.group()[0].isalpha() or token.group()[0] == "_") and not (
            token.group() in _EXPR_NAMES or _SYMBOL.fullmatch(token.group())
        ):
            raise _refuse(shown, f"symbolic shape expression {text[:60]!r} is not plain arithmetic")
        pos = token.end()


def _check_sample_inputs(raw: bytes, shown: str) -> None:
    """torch unpickles the sample inputs with weights_only=True and, if that fails, without: make sure the
    restricted load succeeds on exactly these bytes, so that the fallback never runs."""
    try:
        torch.load(io.BytesIO(raw), weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _refuse(shown, f"its sample inputs are not plain tensors ({first[:160]})") from None


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def _items(value: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of a JSON tree, at any depth."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, item in node.items():
                yield key, item
                stack.append(item)
        elif isinstance(node, list):
            stack.extend(node)


@contextmanager
def _weights_only_torch_load() -> Iterator[None]:
    """Every torch.load during the load of an untrusted archive uses torch's restricted unpickler (tensors and
    containers only), whatever flag the caller passes: a second line of defence behind `check_archive`."""
    original = torch.load

    def restricted(f, *args, weights_only=None, **kwargs):
        return original(f, *args, weights_only=True, **kwargs)

    torch.load = restricted
    try:
        yield
    finally:
        torch.load = original


@contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """torch logs full tracebacks before raising on bad input; tvmquant reports one line instead."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)
