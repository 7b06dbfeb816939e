"""Output files: sidecar and default names, the artifact and its sidecars replaced together or not at all,
and a failing clean-up that never hides the error that caused it."""

import os
from pathlib import Path

import numpy as np
import pytest

from tvmquant import outputs
from tvmquant.errors import UserError
from tvmquant.outputs import default_output, replace_together, sidecar_paths


def test_sidecars_append_their_suffix_so_no_output_is_another_ones_sidecar():
    assert sidecar_paths(Path("d/net.so")) == (Path("d/net.so.json"), Path("d/net.so.npz"))
    assert sidecar_paths(Path("d/out.json"))[0] == Path("d/out.json.json")  # -o out.json no longer eats itself


def test_default_name_carries_method_and_kernel():
    names = {default_output("m", "x86", 2, 2, method) for method in ("uniform", "uniq", "inq", "qnet")}
    assert len(names) == 4
    assert default_output("m", "x86", 2, 4, "uniform", "dequant") == Path("tvmquant_out/m-x86-w2a4-uniform-dequant.so")


def _existing(folder):
    finals = [folder / "a.so", *sidecar_paths(folder / "a.so")]
    for path in finals:
        path.write_text(f"old {path.name}")
    return finals


def test_failed_write_leaves_previous_artifact_whole(tmp_path):
    finals = _existing(tmp_path)
    with pytest.raises(ZeroDivisionError):
        with replace_together(*finals) as temps:
            temps[1].write_text("new meta")
            1 / 0
    assert [p.read_text() for p in finals] == [f"old {p.name}" for p in finals]
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in finals)


def test_success_replaces_all_three(tmp_path):
    finals = _existing(tmp_path)
    with replace_together(*finals) as temps:
        for temp in temps:
            temp.write_text("new")
    assert [p.read_text() for p in finals] == ["new"] * 3
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in finals)


def test_clean_up_failure_does_not_hide_the_real_error(tmp_path, monkeypatch):
    finals = _existing(tmp_path)

    def refuse(self, missing_ok=False):
        raise PermissionError(13, "Permission denied")

    with pytest.raises(ValueError, match="the real error"), pytest.warns(UserWarning, match="could not remove"):
        with replace_together(*finals):
            monkeypatch.setattr(Path, "unlink", refuse)
            raise ValueError("the real error")


def test_write_error_is_one_line(tmp_path, monkeypatch):
    finals = _existing(tmp_path)
    with pytest.raises(UserError, match="cannot write .*a.so: No space left on device"):
        with replace_together(*finals):
            raise OSError(28, "No space left on device")
    assert [p.read_text() for p in finals] == [f"old {p.name}" for p in finals]


def test_compile_writes_exactly_the_artifact_and_its_sidecars(tmp_path, host_target):
    from tvmquant.compile import compile_model, load_source
    from tvmquant.quantize import QuantConfig

    from models_for_tests import Tiny

    calib = np.random.default_rng(0).standard_normal((4, 1, 6, 6)).astype(np.float32)
    source = load_source(Tiny().eval(), (1, 1, 6, 6), calib=calib)
    out = tmp_path / "out" / "tiny.so"
    compile_model(source, QuantConfig(2, 2, 8), host_target, out)
    assert sorted(os.listdir(out.parent)) == ["tiny.so", "tiny.so.json", "tiny.so.npz"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_probe_leaves_nothing(tmp_path):
    outputs.check_output(tmp_path / "new" / "deeper" / "x.so", [])
    assert os.listdir(tmp_path) == []
