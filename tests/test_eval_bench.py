"""`eval` (methods x bits sweep: table and plot) and `bench` (interleaved timing against PyTorch fp32 and ONNX
Runtime int8, per-function profile)."""

import csv
import subprocess
import sys

import pytest

from tvmquant.cli import main

from models_for_tests import save_tiny


def _cli(*argv, timeout=900):
    return subprocess.run([sys.executable, "-m", "tvmquant", *argv], capture_output=True, text=True, timeout=timeout)


def test_eval_builtin_sweep_writes_table_and_plot(tmp_path):
    proc = _cli("eval", "--methods", "uniform,inq", "--bits", "1,4", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert [(r["method"], r["wbits"]) for r in rows] == [("uniform", "1"), ("uniform", "4"), ("inq", "1"), ("inq", "4")]
    by = {(r["method"], r["wbits"]): r for r in rows}
    assert float(by[("uniform", "4")]["accuracy"]) >= 0.95  # real held-out digits, 4 bits keeps accuracy
    assert float(by[("uniform", "1")]["accuracy"]) < float(by[("uniform", "4")]["accuracy"])
    assert "needs at least 2 weight bits" in by[("inq", "1")]["skipped"]
    table = (tmp_path / "sweep.md").read_text()
    assert "| method | W1A1 | W4A4 |" in table and "| inq | n/a |" in table and "fp32: 99.17 %" in table
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| uniform |" in proc.stdout


def test_eval_user_model_without_labels_compiles_each_point(tmp_path):
    model, calib = save_tiny(tmp_path)
    out = tmp_path / "sweep"
    proc = _cli("eval", "--model", model, "--calib", calib, "--methods", "uniform", "--bits", "2",
                "--compile-target", "x86", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = list(csv.DictReader((out / "sweep.csv").open()))
    assert row["accuracy"] == "" and 0 <= float(row["fp32_agreement"]) <= 1
    assert float(row["compiled_agreement"]) == 1.0  # the compiled module computes the reference
    assert "top-1 agreement with fp32" in (out / "sweep.md").read_text()


def test_bench_times_against_pytorch_and_onnx_runtime(tmp_path):
    model, calib = save_tiny(tmp_path)
    artifact = tmp_path / "tiny.so"
    assert _cli("compile", "--model", model, "--calib", calib, "-o", str(artifact)).returncode == 0
    proc = _cli("bench", str(artifact), "--model", model, "--calib", calib, "--rounds", "3", "--min-time", "0.01")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "tvmquant (this artifact)" in out and "PyTorch fp32" in out and "median of 3 interleaved rounds" in out
    assert "top-1 agreement with its quantized reference 8/8, max |diff| 0" in out
    pytest.importorskip("onnxruntime")
    assert "ONNX Runtime int8" in out and "top-1 agreement with PyTorch fp32" in out
    profile = out.split("per-function profile")[1]
    assert "bitserial_conv" in profile and "bitserial_fc" in profile


def test_bench_user_errors_are_one_line(tmp_path, capsys):
    model, calib = save_tiny(tmp_path)
    assert main(["bench", str(tmp_path / "none.so")]) == 2
    assert "artifact not found" in capsys.readouterr().err
    artifact = tmp_path / "t.so"
    assert main(["compile", "--model", model, "--calib", calib, "-o", str(artifact)]) == 0
    capsys.readouterr()
    assert main(["bench", str(artifact)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"tvmquant: error: {artifact} was compiled from 'tiny': pass it with --model (and --calib)"
    assert main(["eval", "--methods", "magic"]) == 2
    assert "unknown method(s) magic" in capsys.readouterr().err
