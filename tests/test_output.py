"""Output a person and a script can read: --json on stdout alone, the HTML report (rendered by headless Chromium
where it is installed), progress bars only on a terminal, MetaSchedule's log in a file, size notes."""

import io
import json
import logging
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from tvmquant import console
from tvmquant.sizes import ratio_text, size_note

from models_for_tests import awkward_source, save_tiny


def _cli(*argv, timeout=600):
    return subprocess.run([sys.executable, "-m", "tvmquant", *argv], capture_output=True, text=True, timeout=timeout)


LAYER_KEYS = {"name", "method", "kind", "wbits", "abits", "kernel", "bytes"}


def test_json_compile_and_run_print_one_object_on_stdout(tmp_path):
    model, calib = save_tiny(tmp_path)
    out, page = tmp_path / "tiny.so", tmp_path / "tiny.html"
    proc = _cli("compile", "--model", model, "--calib", calib, "-o", str(out), "--json", "--report", str(page))
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    assert record["report"] == str(page) and '<table id="layers">' in page.read_text()
    assert f"report:   {page}" in proc.stderr  # the summary points at it
    assert record["artifact"] == str(out) and record["target"] == "x86" and record["command"] == "compile"
    assert [layer["name"] for layer in record["layers"]] == ["conv", "fc"]
    for layer in record["layers"]:
        assert LAYER_KEYS <= set(layer) and layer["kernel"] in ("bitserial", "int8") and layer["wbits"] == 8
    assert record["agreement"] == 1.0 and record["max_abs_diff"] <= 1e-5 and record["latency_ms"] > 0
    assert "accuracy on" in proc.stderr  # the readable summary moved to stderr

    proc = _cli("run", "--target", "x86", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout)
    assert record["command"] == "run" and record["artifact"] == str(out) and record["target"] == "x86"
    assert record["agreement"] == 1.0 and 0 <= record["max_abs_diff"] <= 1e-5 and record["latency_ms"] > 0
    assert [layer["name"] for layer in record["layers"]] == ["conv", "fc"]
    assert all(LAYER_KEYS <= set(layer) for layer in record["layers"])
    assert "agreement with the quantized reference" in proc.stderr


@pytest.mark.parametrize("command", ["compile", "tune", "run", "deploy", "eval", "bench"])
def test_every_subcommand_help_shows_an_example(command, capsys):
    from tvmquant.cli import main

    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"python -m tvmquant {command}" in text


def test_report_path_must_be_html_one_line_nothing_written(tmp_path, capsys):
    from tvmquant.cli import main

    assert main(["compile", "--report", str(tmp_path / "r.txt"), "-o", str(tmp_path / "out" / "m.so")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tvmquant: error: --report wants an .html file path") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_json_error_is_one_line_on_stderr_and_nothing_on_stdout(tmp_path):
    proc = _cli("run", "--target", "x86", str(tmp_path / "none.so"), "--json", timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().startswith("tvmquant: error: artifact not found") and "\n" not in proc.stderr.strip()


@pytest.fixture(scope="module")
def report(tmp_path_factory, host_target):
    from tvmquant.compile import compile_model, evaluate
    from tvmquant.html_report import write_compile_report
    from tvmquant.quantize import QuantConfig

    folder = tmp_path_factory.mktemp("report")
    source = awkward_source(seed=3)
    result = compile_model(source, QuantConfig(2, 2, 8, method="inq"), host_target, folder / "a.so")
    ev = evaluate(result, None)
    return write_compile_report(folder / "report.html", result, ev), result


def test_report_is_one_self_contained_page(report):
    path, result = report
    text = path.read_text()
    assert '<table id="layers">' in text and '<table id="measures">' in text
    for name in result.scheme.layers:
        assert f"<td>{name}</td>" in text
    # every picture is embedded: 1 bytes chart + 1 time chart (x86 is profiled here) + 1 histogram per layer
    assert text.count('src="data:image/png;base64,') == 2 + len(result.source.layers)
    assert "http://" not in text and "https://" not in text
    # the family column names what lowering chose (pow2 runs on shift, or int8 where the CPU has a dot instruction)
    assert "<td>pow2</td>" in text
    assert {"shift", "int8"} & set(result.kernels.values())
    for family in set(result.kernels.values()):
        assert f"<td>{family}</td>" in text


def test_levels_overlaid_are_what_the_quantizer_can_represent(report):
    from tvmquant.html_report import channel_levels

    _, result = report
    weight = result.scheme.layers["conv2"].weight
    used = np.unique(weight.dequantize()[0])
    levels = channel_levels(weight, 0)
    assert len(levels) <= 1 << weight.bits and set(used) <= set(levels)
    magnitudes = np.abs(levels[levels != 0])
    exponents = np.log2(magnitudes / magnitudes.max())
    assert 0.0 in levels and np.allclose(exponents, np.round(exponents))  # powers of two times the scale


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    path, _ = report
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    shot = tmp_path / "shot.png"
    for i, extra in enumerate(([f"--screenshot={shot}", "--window-size=1200,1600"], ["--dump-dom"])):
        profile = tmp_path / f"profile{i}"
        profile.mkdir()
        proc = subprocess.run([_chromium(), *flags, f"--user-data-dir={profile}", *extra, path.as_uri()],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert '<table id="layers">' in dom and "conv2" in dom
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[0] > 100 and pixels.std() > 0.05  # not a blank page
    assert (pixels.reshape(-1, 3).std(axis=1) > 0.1).mean() > 0.001  # some colour: the charts drew


def test_progress_bars_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert console.progress(range(3)).disable

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert not console.progress(range(3)).disable
    assert console.progress(range(3), disable=True).disable


def test_metaschedule_log_goes_to_a_file_not_stdout(tmp_path, capsys):
    logger = logging.getLogger(console.MS_LOGGER)
    handler = logging.StreamHandler(sys.stdout)  # what MetaSchedule installs
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with console.metaschedule_log(tmp_path / "ms.log"):
            logger.getChild("task_scheduler").info("ID | Name | FLOP | Weight")
            logger.warning("a warning")
    finally:
        logger.removeHandler(handler)
    out, err = capsys.readouterr()
    assert "ID | Name" not in out + err and "a warning" in err and "a warning" not in out
    assert "ID | Name | FLOP" in (tmp_path / "ms.log").read_text()


def test_sizes_are_explained():
    note = size_note("conv1", "bitserial", "conv2d", (16, 1, 3, 3), 8, 576, 9408)
    assert note is not None and "more than its 576 B of fp32 weights (144 B of 8-bit codes)" in note
    assert "1 input channel(s) of each kernel tap fill 1 word(s) per plane (2 % of the bits used)" in note
    assert size_note("conv2", "bitserial", "conv2d", (32, 16, 3, 3), 2, 18432, 4992) is None
    assert ratio_text(1000, 250) == "4.0x smaller" and ratio_text(100, 900) == "9.0x larger"


def test_summary_columns_fit_long_layer_names(tmp_path, host_target, capsys):
    import torch

    from tvmquant.compile import compile_model, evaluate, load_source
    from tvmquant.quantize import QuantConfig
    from tvmquant.report import print_compile_summary

    class Long(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a_rather_long_first_convolution_name = torch.nn.Conv2d(1, 4, 3)
            self.fc = torch.nn.Linear(4 * 4 * 4, 3)

        def forward(self, x):
            return self.fc(torch.flatten(self.a_rather_long_first_convolution_name(x), 1))

    calib = np.random.default_rng(0).standard_normal((4, 1, 6, 6)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = compile_model(load_source(Long(), (1, 1, 6, 6), calib=calib), QuantConfig(2, 2, 8), host_target,
                               tmp_path / "l.so")
    capsys.readouterr()
    print_compile_summary(result, evaluate(result, None), None)
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.strip().startswith("layer"))
    row = next(line for line in lines if "a_rather_long_first_convolution_name" in line)
    assert row.index("conv2d") == header.index("op")  # the name did not push the columns out of line
