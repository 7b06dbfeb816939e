"""`auto` per layer: the stated cost rule without measurements, the fastest measured family where `tune` timed
several (families.json, crafted here), exact either way; a bad families.json is a one-line error."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tvmquant import family_times, pipeline
from tvmquant.compile import compile_model
from tvmquant.database import RECORDS, WORKLOADS
from tvmquant.errors import UserError
from tvmquant.kernels import int8, registry
from tvmquant.pipeline import BuildOptions, QuantRequest, TuningRecords
from tvmquant.quantize import QuantConfig
from tvmquant.tune_families import candidate_kernels

from models_for_tests import awkward_source, run_compiled, save_tiny

UNIFORM = QuantConfig(2, 2, 2)
INQ = QuantConfig(3, 4, 3, method="inq")


@pytest.fixture(scope="module")
def awkward():
    return awkward_source(0)


def _folder(tmp_path, kernels: list[dict]):
    """A tuning folder with an empty MetaSchedule database and the given families.json entries."""
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / WORKLOADS).write_text("")
    (folder / RECORDS).write_text("")
    text = json.dumps({"format": family_times.FORMAT, "version": 1, "kernels": kernels})
    (folder / family_times.FILE).write_text(text)
    return folder


def _crafted(source, config, spec, fastest):
    """families.json entries for every candidate kernel, `fastest(layer, candidates)` at 0.1 ms, the rest 0.5."""
    kernels = candidate_kernels(source, pipeline.quantize(source, QuantRequest(config)), spec)
    names = {}
    for layer, family, _ in kernels:
        names.setdefault(layer, []).append(family)
    chosen = {layer: fastest(layer, families) for layer, families in names.items()}
    entries = [{"workload": family_times.workload_key(func), "layer": layer, "family": family,
                "ms": 0.1 if family == chosen[layer] else 0.5} for layer, family, func in kernels]
    return entries, chosen


def test_untuned_build_follows_the_stated_rule(awkward, tmp_path, host_target):
    result = compile_model(awkward, UNIFORM, host_target, tmp_path / "m.so")
    target, isa = host_target.tvm_target, int8.dot_isa(host_target.tvm_target)
    assert result.lowered.choices, "every layer here has two exact families"
    for name, why in result.lowered.choices.items():
        layer = result.scheme.layers[name]
        assert result.kernels[name] == registry.auto_family(layer, isa) == registry.choose(layer, target)[0].name
        assert why == registry.rule_why(layer, isa) and why.startswith("cost rule: ")


@pytest.mark.parametrize("config", [UNIFORM, INQ], ids=["uniform", "inq"])
def test_choice_follows_the_measurements_and_stays_exact(awkward, config, tmp_path, host_target):
    """Each layer's measured-fastest family is the one the rule would *not* pick: the records decide."""
    isa = int8.dot_isa(host_target.tvm_target)
    quantized = pipeline.quantize(awkward, QuantRequest(config))

    def against_rule(layer, families):
        return next(f for f in families if f != registry.auto_family(quantized.scheme.layers[layer], isa))

    entries, chosen = _crafted(awkward, config, host_target, against_rule)
    assert len(chosen) >= 2
    records = TuningRecords.read(_folder(tmp_path, entries))
    result = compile_model(awkward, config, host_target, tmp_path / "m.so", BuildOptions(records=records))
    for layer, family in chosen.items():
        assert result.kernels[layer] == family
        other = next(f for f in registry.candidates(quantized.scheme.layers[layer], host_target.tvm_target) if f != family)
        assert result.lowered.choices[layer] == f"measured 0.1 ms vs {other} 0.5 ms"
    np.testing.assert_array_equal(run_compiled(result, awkward.eval_x, 1), result.reference_outputs)


def test_one_measured_family_keeps_the_rule(awkward, tmp_path, host_target):
    entries, _ = _crafted(awkward, UNIFORM, host_target, lambda layer, families: families[0])
    kept = [e for e in entries if e["family"] == "int8"]
    records = TuningRecords.read(_folder(tmp_path, kept))
    result = compile_model(awkward, UNIFORM, host_target, tmp_path / "m.so", BuildOptions(records=records))
    isa = int8.dot_isa(host_target.tvm_target)
    for name, why in result.lowered.choices.items():
        assert result.kernels[name] == registry.auto_family(result.scheme.layers[name], isa)
        assert why.startswith("cost rule: ") and why.endswith("(only int8 measured)")


ENTRY = {"workload": "abc123", "layer": "conv1", "family": "int8", "ms": 0.2}
BAD = [
    ("{not json", "not valid JSON"),
    (json.dumps([1, 2]), "not a family-times file"),
    (json.dumps({"format": family_times.FORMAT, "version": 2, "kernels": []}), "version 2"),
    (json.dumps({"format": family_times.FORMAT, "version": 1, "kernels": {}}), "'kernels' is not a list"),
    (json.dumps({"format": family_times.FORMAT, "version": 1, "kernels": [ENTRY | {"ms": -1}]}), "entry 1: ms"),
    (json.dumps({"format": family_times.FORMAT, "version": 1, "kernels": [ENTRY, ENTRY | {"ms": "NaN"}]}), "entry 2: ms"),
    (json.dumps({"format": family_times.FORMAT, "version": 1, "kernels": [ENTRY | {"ms": True}]}), "entry 1: ms"),
    (json.dumps({"format": family_times.FORMAT, "version": 1, "kernels": [ENTRY | {"family": "rm -rf"}]}), "family"),
    (json.dumps({"format": family_times.FORMAT, "version": 1, "kernels": [ENTRY | {"workload": "../x"}]}), "workload"),
    (json.dumps({"format": family_times.FORMAT, "version": 1, "kernels": [ENTRY | {"extra": 1}]}), "exactly the keys"),
    (json.dumps({"format": family_times.FORMAT, "version": 1, "kernels": [ENTRY | {"layer": "a\x1b[2J"}]}), "layer"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m for _, m in BAD])
def test_bad_file_is_refused_with_what_is_wrong(tmp_path, text, message):
    (tmp_path / family_times.FILE).write_text(text)
    with pytest.raises(UserError, match=message):
        family_times.read(tmp_path)


def test_a_good_file_round_trips(tmp_path):
    kept = family_times.KernelTime("abc123", "conv1", "int8", 0.2)
    family_times.write(tmp_path, [kept])
    family_times.write(tmp_path, [family_times.KernelTime("def456", "conv1", "bitserial", 0.3)])
    assert family_times.read(tmp_path)["abc123"] == kept and len(family_times.read(tmp_path)) == 2
    assert family_times.merged([tmp_path]) == {"abc123": 0.2, "def456": 0.3}


def test_oversized_or_linked_file_is_refused(tmp_path):
    (tmp_path / "elsewhere").write_text("{}")
    (tmp_path / family_times.FILE).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="symbolic link"):
        family_times.read(tmp_path)
    (tmp_path / family_times.FILE).unlink()
    (tmp_path / family_times.FILE).write_text(" " * (family_times.MAX_BYTES + 1))
    with pytest.raises(UserError, match="more than"):
        family_times.read(tmp_path)


def test_cli_bad_file_is_one_line_exit_2_nothing_written(tmp_path):
    model, calib = save_tiny(tmp_path)
    folder = _folder(tmp_path, [ENTRY | {"ms": "fast"}])
    out = tmp_path / "t.so"
    proc = subprocess.run(
        [sys.executable, "-m", "tvmquant", "compile", "--target", "x86", "--model", model, "--calib", calib,
         "--tuning-log", str(folder), "-o", str(out)], capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and f"{folder / family_times.FILE}: kernel entry 1: ms" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("tvmquant: error: "), proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_tune_times_every_family_and_compile_picks_the_fastest(tmp_path):
    """The real thing: `tune --kernel auto` measures both exact families of each layer; compile applies them."""
    model, calib = save_tiny(tmp_path)
    log_dir = tmp_path / "logs"
    common = ["--target", "x86", "--model", model, "--calib", calib, "--bits", "2"]
    proc = subprocess.run([sys.executable, "-m", "tvmquant", "tune", *common, "--log-dir", str(log_dir),
                           "--trials", "2"], capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    times = family_times.read(log_dir)
    assert {(k.layer, k.family) for k in times.values()} >= {("conv", "bitserial"), ("conv", "int8")}
    proc = subprocess.run([sys.executable, "-m", "tvmquant", "compile", *common, "--tuning-log", str(log_dir),
                           "-o", str(tmp_path / "t.so")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "kernel: conv runs on" in proc.stdout and "(measured " in proc.stdout, proc.stdout
    fastest = min((k for k in times.values() if k.layer == "conv"), key=lambda k: k.ms).family
    assert f"kernel: conv runs on {fastest} (measured" in proc.stdout
