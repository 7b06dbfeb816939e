"""Crafted `.pt2` archives: each would run code, write a file or exhaust memory through `torch.export.load`
(torch 2.13) and what tvmquant does with the program next. tvmquant must refuse them all with a one-line
error and the marker file must never appear. A plain archive still loads, and --trust-model still works."""

import io
import json
import struct
import zipfile
import zlib

import pytest
import torch

from tvmquant import frontend
from tvmquant.cli import main
from tvmquant.errors import UserError

SHAPE = (1, 1, 5, 5)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c = torch.nn.Conv2d(1, 2, 3)
        self.register_buffer("b", torch.ones(2))

    def forward(self, x):
        return self.c(x).sum((2, 3)) + self.b + torch.tensor([1.0, 2.0])


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> dict[str, bytes]:
    """The members of a real torch.export.save archive, by name under its top folder."""
    path = tmp_path_factory.mktemp("plain") / "net.pt2"
    torch.export.save(torch.export.export(_Net().eval(), (torch.zeros(SHAPE),)), path)
    with zipfile.ZipFile(path) as archive:
        return {name.split("/", 1)[1]: archive.read(name) for name in archive.namelist()}


def _write(path, members: dict[str, bytes], prefix="net/"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(prefix + name, data)
    return path


class _Payload:
    """Unpickling this writes the marker file: what an attacker's archive would do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def _pickled(marker) -> bytes:
    import pickle

    return pickle.dumps(_Payload(marker))


def _torch_saved(marker) -> bytes:
    buffer = io.BytesIO()
    torch.save({"x": _Payload(marker)}, buffer)
    return buffer.getvalue()


def _python(marker) -> str:
    """The payload as a Python expression without dots (FQN parts are split on '.')."""
    code = f"open({str(marker)!r}, 'w').write('pwned')"
    return f"exec(bytes({tuple(code.encode())!r}))"


def _edit_json(members, name, edit):
    data = json.loads(members[name])
    edit(data)
    members[name] = json.dumps(data).encode()


def _weight_pickle(m, marker):
    _edit_json(m, "data/weights/model_weights_config.json", lambda c: c["config"]["c.weight"].update(use_pickle=True))
    m["data/weights/weight_0"] = _torch_saved(marker)


def _constant_pickle(m, marker):
    _edit_json(m, "data/constants/model_constants_config.json",
               lambda c: c["config"]["lifted_tensor_0"].update(use_pickle=True))
    m["data/constants/tensor_0"] = _pickled(marker)


def _opaque_object(m, marker):
    _edit_json(m, "data/constants/model_constants_config.json",
               lambda c: c["config"]["lifted_tensor_0"].update(path_name="opaque_obj_0", use_pickle=True))
    m["data/constants/opaque_obj_0"] = _pickled(marker)


def _sample_inputs(m, marker):  # no flag at all: torch falls back to weights_only=False when the safe load fails
    m["data/sample_inputs/model.pt"] = _torch_saved(marker)


def _legacy_weights(m, marker):  # a legacy weights file wins over the config and is unpickled the same way
    m["data/weights/model.pt"] = _torch_saved(marker)


def _legacy_constants(m, marker):
    m["data/constants/model.pt"] = _torch_saved(marker)


def _guards_code(m, marker):  # exec'ed by ep.module()
    _edit_json(m, "models/model.json", lambda p: p.update(guards_code=[f"{_python(marker)} is None"]))


def _sympy_expr(m, marker):  # sympy.sympify evals a symbolic size
    def edit(program):
        values = program["graph_module"]["graph"]["tensor_values"]
        code = f"open({str(marker)!r}, 'w').write('pwned')"
        values["x"]["sizes"][0] = {"as_expr": {"expr_str": f"exec({code!r})", "hint": {"as_int": 1}}}

    _edit_json(m, "models/model.json", edit)


def _fqn_codegen(m, marker):  # a parameter name pasted into the Python source FX generates
    name = f'c.x", {_python(marker)}) and ("'  # -> getattr(self.c, "x", exec(...)) and ("")

    def edit_config(config):
        config["config"][name] = config["config"].pop("c.weight")

    def edit_program(program):
        for spec in program["graph_module"]["signature"]["input_specs"]:
            if spec.get("parameter", {}).get("parameter_name") == "c.weight":
                spec["parameter"]["parameter_name"] = name

    _edit_json(m, "data/weights/model_weights_config.json", edit_config)
    _edit_json(m, "models/model.json", edit_program)


def _aten_save(m, marker):  # a graph node that writes a named file (today dropped as dead code before it runs)
    def edit(program):
        nodes = program["graph_module"]["graph"]["nodes"]
        nodes.insert(0, {"target": "torch.ops.aten.save.default", "name": "evil", "outputs": [],
                         "inputs": [{"name": "item", "arg": {"as_tensor": {"name": "x"}}, "kind": 1},
                                    {"name": "filename", "arg": {"as_string": str(marker)}, "kind": 1}],
                         "metadata": {}, "is_hop_single_tensor_return": None})

    _edit_json(m, "models/model.json", edit)


PAYLOADS = [_weight_pickle, _constant_pickle, _opaque_object, _sample_inputs, _legacy_weights, _legacy_constants,
            _guards_code,
            _sympy_expr, _fqn_codegen, _aten_save]


def _load_like_compile(path):
    """What `compile` does with a model file: load it, then build the runnable module."""
    ep = frontend.load_exported(path)
    frontend.prepare(ep, SHAPE)


@pytest.mark.parametrize("craft", PAYLOADS, ids=lambda f: f.__name__.strip("_"))
def test_crafted_archive_runs_no_code(tmp_path, plain, craft):
    marker = tmp_path / "marker"
    members = dict(plain)
    craft(members, marker)
    path = _write(tmp_path / "evil.pt2", members)
    with pytest.raises(UserError) as exc:
        _load_like_compile(path)
    assert not marker.exists(), f"{craft.__name__}: the archive ran code"
    assert "\n" not in str(exc.value) and "--trust-model" in str(exc.value)


def test_legacy_format_zip_runs_no_code(tmp_path, plain):
    """torch.export.load falls back to the pre-2.7 layout (root 'version', pickled state dict)."""
    marker = tmp_path / "marker"
    from torch._export.serde.schema import SCHEMA_VERSION

    path = tmp_path / "old.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("version", ".".join(map(str, SCHEMA_VERSION)))
        archive.writestr("serialized_exported_program.json", plain["models/model.json"])
        archive.writestr("serialized_state_dict.pt", _torch_saved(marker))
        archive.writestr("serialized_constants.pt", _torch_saved(marker))
        archive.writestr("serialized_example_inputs.pt", _torch_saved(marker))
    with pytest.raises(UserError):
        _load_like_compile(path)
    assert not marker.exists()


def _refused(tmp_path, members, prefix="net/", needle=""):
    path = _write(tmp_path / "bad.pt2", members, prefix)
    with pytest.raises(UserError) as exc:
        frontend.load_exported(path)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("name", ["../../escape", "/abs/escape", "a\\..\\escape", "C:/escape"])
def test_path_traversal_member_refused(tmp_path, plain, name):
    with zipfile.ZipFile(tmp_path / "bad.pt2", "w") as archive:
        for member, data in plain.items():
            archive.writestr("net/" + member, data)
        archive.writestr(zipfile.ZipInfo(name), b"x")
    with pytest.raises(UserError, match="outside the archive"):
        frontend.load_exported(tmp_path / "bad.pt2")


def test_aotinductor_library_refused(tmp_path, plain):
    members = dict(plain, **{"data/aotinductor/model/model.so": b"\x7fELF"})
    _refused(tmp_path, members, needle="data/aotinductor/model/model.so")


def test_compressed_bomb_refused_without_inflating(tmp_path, plain):
    """256 MiB of zeros deflated to a few hundred KiB: refused from the directory, never decompressed."""
    path = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for member, data in plain.items():
            archive.writestr("net/" + member, data)
        info = zipfile.ZipInfo("net/data/weights/weight_9")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as out:
            chunk = bytes(1 << 20)
            for _ in range(256):
                out.write(chunk)
    assert path.stat().st_size < 4 << 20
    with pytest.raises(UserError, match="compressed"):
        frontend.load_exported(path)


def test_declared_size_beyond_archive_refused(tmp_path, plain):
    """A stored member whose central-directory size (and compressed size) claims 3 GiB."""
    path = _write(tmp_path / "lie.pt2", plain)
    data = bytearray(path.read_bytes())
    start = data.rfind(b"PK\x01\x02", 0, data.rfind(b"PK\x05\x06"))  # the last central directory entry
    struct.pack_into("<II", data, start + 20, 3 << 30, 3 << 30)
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="more than the archive holds"):
        frontend.load_exported(path)


def test_empty_record_with_huge_shape_refused(tmp_path, plain):
    """An empty weight record makes torch allocate its declared shape as zeros (here 4 TiB)."""
    members = dict(plain)
    _edit_json(members, "data/weights/model_weights_config.json", lambda c: c["config"]["c.weight"]["tensor_meta"].update(
        sizes=[{"as_int": 1 << 20}, {"as_int": 1 << 20}, {"as_int": 1}, {"as_int": 1}]))
    members["data/weights/weight_0"] = b""
    _refused(tmp_path, members, needle="declares")


def test_not_an_export_zip_is_one_quiet_line(tmp_path, capsys, caplog):
    path = tmp_path / "other.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "not a model")
    assert main(["compile", "--model", str(path), "--calib", str(tmp_path / "c.npy"), "-o", str(tmp_path / "o.so")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not caplog.records


def test_plain_archive_loads_and_runs(tmp_path, plain):
    ep = frontend.load_exported(_write(tmp_path / "ok.pt2", plain))
    gm, _ = frontend.prepare(ep, SHAPE)
    net = _Net()
    net.load_state_dict({k: v for k, v in ep.state_dict.items()})
    x = torch.randn(SHAPE)
    torch.testing.assert_close(gm(x), net.eval()(x))


def test_trust_model_loads_what_untrusted_refuses(tmp_path, plain):
    """A tensor-subclass weight saved with pickle by the user's own torch.export.save: refused by default,
    loaded with --trust-model (the archive is the user's own, so its pickle is too)."""
    members = dict(plain)
    _edit_json(members, "data/weights/model_weights_config.json", lambda c: c["config"]["c.bias"].update(use_pickle=True))
    buffer = io.BytesIO()
    torch.save(torch.nn.Parameter(torch.tensor([0.5, -0.5])), buffer)
    members["data/weights/weight_1"] = buffer.getvalue()
    path = _write(tmp_path / "mine.pt2", members)
    with pytest.raises(UserError, match="pickled"):
        frontend.load_exported(path)
    ep = frontend.load_exported(path, trust=True)
    torch.testing.assert_close(ep.state_dict["c.bias"], torch.tensor([0.5, -0.5]))


def test_dynamic_shape_archive_with_guards_still_loads(tmp_path):
    """torch writes sympy srepr strings and guard code for dynamic dimensions: plain ones are accepted."""

    class Reshaping(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.pad(x.reshape(x.shape[0] * 2, -1), (0, 1)) * (x.shape[1] ** 0.5)

    batch, half = torch.export.Dim("batch", min=2, max=64), torch.export.Dim("half", min=2, max=32)
    ep = torch.export.export(Reshaping(), (torch.zeros(4, 6),), dynamic_shapes=({0: batch, 1: 2 * half},))
    assert ep._guards_code, "the case needs guard code to mean anything"
    path = tmp_path / "dyn.pt2"
    torch.export.save(ep, path)
    loaded = frontend.load_exported(path)
    torch.testing.assert_close(loaded.module()(torch.ones(6, 4)), ep.module()(torch.ones(6, 4)))
