"""Linking cross-compiled artifacts: the system cross compiler when installed, else the pip zig (linker.py)."""

import subprocess

import pytest
import tvm
from tvm import te

from tvmquant.errors import UserError
from tvmquant.linker import find_linker
from tvmquant.resources import shipped_dir, user_tuning_dir
from tvmquant.target import known_targets, load_target

AARCH64_ELF_MACHINE = 183  # e_machine of an ELF built for aarch64


def test_forced_choices_and_bad_values(monkeypatch):
    monkeypatch.setenv("TVMQUANT_LINKER", "zig")
    assert find_linker("aarch64-linux-gnu-gcc", "aarch64-linux-gnu", "arm_cpu").command[1:4] == ("-m", "ziglang", "cc")
    monkeypatch.setenv("TVMQUANT_LINKER", "system")
    with pytest.raises(UserError, match="not installed"):
        find_linker("no-such-cross-gcc", "aarch64-linux-gnu", "arm_cpu")
    monkeypatch.setenv("TVMQUANT_LINKER", "auto")
    assert "zig" in find_linker("no-such-cross-gcc", "aarch64-linux-gnu", "arm_cpu").description
    monkeypatch.setenv("TVMQUANT_LINKER", "clang")
    with pytest.raises(UserError, match="TVMQUANT_LINKER"):
        find_linker("aarch64-linux-gnu-gcc", "aarch64-linux-gnu", "arm_cpu")


def test_zig_links_a_real_aarch64_library(monkeypatch, tmp_path):
    monkeypatch.setenv("TVMQUANT_LINKER", "zig")
    a = te.placeholder((16,), name="a")
    b = te.compute((16,), lambda i: a[i] * 2.0, name="b")
    target = load_target("arm_cpu")
    lib = tvm.compile(tvm.IRModule({"main": te.create_prim_func([a, b])}), target.tvm_target)
    out = tmp_path / "k.so"
    assert "zig" in target.export(lib, out)
    header = out.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == AARCH64_ELF_MACHINE
    symbols = subprocess.run(["nm", "-D", str(out)], capture_output=True, text=True).stdout
    assert " T __tvm_ffi_main" in symbols  # the kernel is exported for TVM's loader


def test_shipped_data_and_user_folder(monkeypatch, tmp_path):
    assert {"x86", "arm_cpu"} <= set(known_targets())
    assert (shipped_dir("tuning_logs") / "x86").is_dir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert user_tuning_dir("x86") == tmp_path / "tvmquant" / "tuning_logs" / "x86"
