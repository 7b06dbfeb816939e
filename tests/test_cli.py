"""The command line as a user meets it: the main job end to end, and one-line errors for bad input."""

import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from tvmquant.cli import main
from tvmquant.outputs import sidecar_paths


def test_compile_then_run_end_to_end(tmp_path):
    out = tmp_path / "digits.so"
    proc = subprocess.run(
        [sys.executable, "-m", "tvmquant", "compile", "--target", "x86", "--bits", "2", "-o", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "top-1 agreement 360/360" in proc.stdout
    assert "bitserial" in proc.stdout and "BatchNorm folded into: conv1, conv2" in proc.stdout
    assert out.is_file() and all(p.is_file() for p in sidecar_paths(out))

    # the artifact is self-contained: load_module + VirtualMachine, float32 in and out like the model
    import tvm
    from tvm import relax
    from tvmquant.models.digits import load_split

    x, _ = load_split("test")
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(out)), tvm.cpu())
    y = vm["main"](tvm.runtime.tensor(x[:1])).numpy()
    assert y.shape == (1, 10) and y.dtype == np.float32

    proc = subprocess.run(
        [sys.executable, "-m", "tvmquant", "run", "--target", "x86", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "agreement with the quantized reference 360/360" in proc.stdout
    assert "latency on x86" in proc.stdout


def test_cli_names_match_the_registries():
    from tvmquant import names
    from tvmquant.kernels.registry import CHOICES
    from tvmquant.methods.registry import METHODS, QAT_METHODS

    assert names.KERNELS == CHOICES
    assert names.METHODS == tuple(METHODS) and names.QAT_METHODS == QAT_METHODS


def test_help_and_usage_errors_need_no_heavy_import():
    """--help and a bad flag answer before torch or TVM is imported (they take seconds to load)."""
    code = ("import sys; from tvmquant.cli import main\n"
            "for argv in (['compile', '--bits', '9'], ['compile', '--nope'], ['tune', '--method', 'x']):\n"
            "    assert main(argv) == 2\n"
            "assert 'torch' not in sys.modules and 'tvm' not in sys.modules, sorted(sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert all(line.startswith("tvmquant: error:") for line in proc.stderr.splitlines()), proc.stderr


def test_help_explains_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compile", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--target", "--bits", "--wbits", "--abits", "--first-last-bits", "--calib", "--model", "--output"):
        assert flag in text


def _pt2(tmp_path, module, shape, name="m.pt2"):
    path = tmp_path / name
    torch.export.save(torch.export.export(module.eval(), (torch.zeros(shape),)), path)
    return path


class _Det(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.linalg.det(self.fc(x).reshape(-1, 2, 2, 2))


def _bad_cases(tmp_path):
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"definitely not a zip")
    foreign = tmp_path / "foreign.pt2"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("x.txt", "hi")
    calib = tmp_path / "calib.npy"
    np.save(calib, np.zeros((4, 1, 7, 7), np.float32))
    not_npy = tmp_path / "calib.txt"
    not_npy.write_text("1 2 3")
    det = _pt2(tmp_path, _Det(), (1, 8), "det.pt2")
    det_calib = tmp_path / "det_calib.npy"
    np.save(det_calib, np.zeros((4, 8), np.float32))
    return {
        "bits 0": (["--bits", "0"], "must be an integer from 1 to 8"),
        "bits 9": (["--bits", "9"], "must be an integer from 1 to 8"),
        "wbits 12": (["--wbits", "12"], "--wbits"),
        "first-last 0": (["--first-last-bits", "0"], "--first-last-bits"),
        "unknown target": (["--target", "riscv"], "unknown target 'riscv'; known targets: arm_cpu, cuda, vta, x86"),
        "unknown method": (["--method", "magic"], "invalid choice: 'magic'"),
        "missing model": (["--model", str(tmp_path / "none.pt2")], "model file not found"),
        "corrupt model": (["--model", str(junk)], "is not a torch.export archive"),
        "foreign zip": (["--model", str(foreign)], "not a readable torch.export archive"),
        "calib shape": (["--calib", str(calib)], "does not fit the model input (1, 1, 8, 8)"),
        "calib not npy": (["--calib", str(not_npy)], "is not a readable .npy"),
        "calib missing": (["--calib", str(tmp_path / "nope.npy")], "calibration file not found"),
        "user model without calib": (["--model", str(det)], "needs calibration data"),
        "unsupported op": (["--model", str(det), "--calib", str(det_calib)], "linalg_det"),
    }


@pytest.mark.parametrize("case", [
    "bits 0", "bits 9", "wbits 12", "first-last 0", "unknown target", "unknown method", "missing model",
    "corrupt model", "foreign zip", "calib shape", "calib not npy", "calib missing", "user model without calib",
    "unsupported op",
])
def test_bad_input_is_one_line_exit_2_nothing_written(case, tmp_path, capsys):
    argv, message = _bad_cases(tmp_path)[case]
    out = tmp_path / "out" / "model.so"
    code = main(["compile", *argv, "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tvmquant: error:"), err
    assert message in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_run_rejects_wrong_target_and_missing_artifact(tmp_path, capsys):
    assert main(["run", "--target", "x86", str(tmp_path / "none.so")]) == 2
    assert "artifact not found" in capsys.readouterr().err


def test_run_without_a_device_is_one_line_error(tmp_path, capsys):
    from tvmquant.compile import compile_model, load_source
    from tvmquant.quantize import QuantConfig
    from tvmquant.target import load_target

    from models_for_tests import Awkward

    calib = np.random.default_rng(0).standard_normal((2, 3, 9, 4)).astype(np.float32)
    source = load_source(Awkward().eval(), (1, 3, 9, 4), calib=calib)
    artifact = tmp_path / "a.so"
    compile_model(source, QuantConfig(2, 2, 8), load_target("x86"), artifact)
    sidecar_paths(artifact)[0].write_text(
        sidecar_paths(artifact)[0].read_text().replace('"target": "x86"', '"target": "arm_cpu"')
    )
    capsys.readouterr()
    assert main(["run", "--target", "arm_cpu", "--rpc", "127.0.0.1:1", str(artifact)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tvmquant: error: no TVM RPC server at 127.0.0.1:1") and "\n" not in err
