"""Tuning on this machine (x86): records, resume, the lock, damaged database lines, compile applying records,
and the one-line errors for a missing tracker or device."""

import json
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from tvmquant.pipeline import BuildOptions, TuningRecords
from tvmquant.compile import compile_model, load_source
from tvmquant.database import RECORDS, WORKLOADS, open_database, read_database
from tvmquant.outputs import sidecar_paths
from tvmquant.quantize import QuantConfig

from models_for_tests import save_tiny

TUNE_TIMEOUT = 600


def _tune_cmd(model, calib, log_dir, *extra):
    return [sys.executable, "-m", "tvmquant", "tune", "--target", "x86", "--model", model, "--calib", calib,
            "--log-dir", str(log_dir), "--trials", "2", "--kernel", "bitserial", *extra]  # auto: int8, untunable


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """Two tune processes started together on one log folder: the lock makes the second wait and resume."""
    folder = tmp_path_factory.mktemp("tune")
    model, calib = save_tiny(folder)
    log_dir = folder / "logs"
    first = subprocess.Popen(_tune_cmd(model, calib, log_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    second = subprocess.Popen(_tune_cmd(model, calib, log_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=TUNE_TIMEOUT) for p in (first, second)]
    assert first.returncode == 0, outs[0][1][-2000:]
    assert second.returncode == 0, outs[1][1][-2000:]
    return folder, model, calib, log_dir, outs


def test_tune_writes_a_valid_database_and_a_summary(tuned):
    _, _, _, log_dir, outs = tuned
    stdout = outs[0][0]
    assert "untuned ms" in stdout and "best ms" in stdout
    assert "bitserial_conv" in stdout and "bitserial_fc" in stdout
    assert "[INFO]" not in stdout + outs[0][1]  # MetaSchedule's log went to its file
    assert "[task_scheduler.cc" in (log_dir / "metaschedule.log").read_text()
    for name in (WORKLOADS, RECORDS):
        lines = (log_dir / name).read_text().splitlines()
        assert lines and all(json.loads(line) for line in lines)


def test_concurrent_tune_waits_for_the_lock_and_loses_nothing(tuned):
    _, _, _, log_dir, outs = tuned
    waited = [out for out in outs if "waiting for" in out[1]]
    assert len(waited) == 1, "exactly one run should wait for the other's lock"  # which one: process start order
    workloads = (log_dir / WORKLOADS).read_text().splitlines()
    assert len(workloads) == len(set(json.loads(w)[0] for w in workloads)), "a workload was written twice"
    records = [json.loads(line) for line in (log_dir / RECORDS).read_text().splitlines()]
    assert all(0 <= index < len(workloads) for index, _ in records)
    # the run that waited found every task tuned and measured nothing
    assert "records for this model" in waited[0][0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_database(log_dir).get_all_tuning_records()) == len(records)


def test_second_run_resumes_without_measuring(tuned):
    _, model, calib, log_dir, _ = tuned
    before = (log_dir / RECORDS).read_text()
    proc = subprocess.run(_tune_cmd(model, calib, log_dir), capture_output=True, text=True, timeout=TUNE_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (log_dir / RECORDS).read_text() == before
    assert "tuning " not in proc.stderr.replace("tuning x86", "")  # no task was tuned again


def test_tune_json_is_one_object_on_stdout(tuned):
    _, model, calib, log_dir, _ = tuned
    proc = subprocess.run(_tune_cmd(model, calib, log_dir, "--json"), capture_output=True, text=True, timeout=TUNE_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout)
    assert record["command"] == "tune" and record["target"] == "x86" and record["artifact"] is None
    assert [layer["name"] for layer in record["layers"]] == ["conv", "fc"]
    assert all(layer["wbits"] == 8 and layer["kind"] is None for layer in record["layers"])  # first and last
    names = [t["name"] for t in record["tasks"]]
    assert any(n.endswith("_conv") for n in names) and any(n.endswith("_fc") for n in names), names
    assert "untuned ms" in proc.stderr


def test_compile_applies_records_and_stays_correct(tuned, tmp_path):
    folder, model, calib, log_dir, _ = tuned
    proc = subprocess.run(
        [sys.executable, "-m", "tvmquant", "compile", "--target", "x86", "--model", model, "--calib", calib,
         "--tuning-log", str(log_dir), "--kernel", "bitserial", "-o", str(tmp_path / "t.so")],
        capture_output=True, text=True, timeout=TUNE_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"tuning records applied from {log_dir}" in proc.stdout
    applied, *rest = proc.stdout.split("tuning records applied")[1].splitlines()
    kept = rest[0] if rest and "kept untuned" in rest[0] else ""
    assert "bitserial_conv" in applied + kept  # its record matched: applied, or measured slower than the default
    assert "top-1 agreement 8/8" in proc.stdout
    assert "Logging directory" not in proc.stdout + proc.stderr  # compile does no tuning


def test_damaged_lines_are_dropped_with_a_warning_and_the_rest_kept(tuned, tmp_path):
    _, _, _, log_dir, _ = tuned
    copy = tmp_path / "db"
    copy.mkdir()
    for name in (WORKLOADS, RECORDS):
        (copy / name).write_text((log_dir / name).read_text())
    lines = (copy / RECORDS).read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]  # truncated mid-line, as by a killed writer
    (copy / RECORDS).write_text("\n".join(lines) + "\n" + '[0, ["garbage"]]\n' + "{not json\n")
    damaged = (copy / RECORDS).read_text()
    with pytest.warns(UserWarning, match=f"{copy / RECORDS}:2:"):
        assert len(read_database(copy).get_all_tuning_records()) == len(lines) - 1
    assert (copy / RECORDS).read_text() == damaged  # compile's reading never rewrites the folder
    with pytest.warns(UserWarning) as caught:
        database = open_database(copy)
    messages = [str(w.message) for w in caught]
    assert any(f"{copy / RECORDS}:2:" in m for m in messages)
    assert any(f"{copy / RECORDS}:{len(lines) + 1}:" in m for m in messages)
    assert any(f"{copy / RECORDS}:{len(lines) + 2}:" in m for m in messages)
    assert len(database.get_all_tuning_records()) == len(lines) - 1
    assert (copy / f"{RECORDS}.rejected").read_text().count("\n") == 3


def test_damaged_workload_line_renumbers_records(tuned, tmp_path):
    _, _, _, log_dir, _ = tuned
    copy = tmp_path / "db"
    copy.mkdir()
    workloads = (log_dir / WORKLOADS).read_text().splitlines()
    records = (log_dir / RECORDS).read_text().splitlines()
    (copy / WORKLOADS).write_text("\n".join(["oops", *workloads]) + "\n")  # every index is now off by one
    (copy / RECORDS).write_text("".join(json.dumps([json.loads(r)[0] + 1, json.loads(r)[1]]) + "\n" for r in records))
    with pytest.warns(UserWarning, match=f"{WORKLOADS}:1:"):
        database = open_database(copy)
    assert len(database.get_all_tuning_records()) == len(records)


def test_compile_without_records_in_python_api_is_unchanged(tuned, host_target, tmp_path):
    folder, _, _, log_dir, _ = tuned
    from models_for_tests import Tiny
    import torch

    torch.manual_seed(0)
    calib = np.load(folder / "calib.npy")
    source = load_source(Tiny().eval(), (1, 1, 6, 6), calib=calib)
    plain = compile_model(source, QuantConfig(2, 2), host_target, tmp_path / "a.so", BuildOptions(kernel="bitserial"))
    tuned_result = compile_model(source, QuantConfig(2, 2), host_target, tmp_path / "b.so",
                                 BuildOptions("bitserial", TuningRecords.read(log_dir)))  # the family the fixture tuned
    assert plain.tuned == [] and tuned_result.tuned


def test_unreachable_tracker_is_a_one_line_error(tmp_path):
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tvmquant", "tune", "--target", "arm_cpu", "--rpc-tracker", "127.0.0.1:9199",
         "--rpc-key", "nothing", "--log-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no RPC tracker at 127.0.0.1:9199" in proc.stderr
    assert time.monotonic() - start < 60


@pytest.fixture
def empty_tracker():
    port = 9198
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                                "--port-end", str(port + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from tvmquant.rpc import is_listening

    deadline = time.monotonic() + 30
    while not is_listening(f"127.0.0.1:{port}") and time.monotonic() < deadline:
        time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    tracker.terminate()
    tracker.wait(timeout=30)


@pytest.mark.parametrize("command", ["tune", "deploy"])
def test_no_server_under_the_key_is_a_one_line_error(empty_tracker, command, tmp_path):
    if command == "tune":
        args = ["tune", "--target", "arm_cpu", "--log-dir", str(tmp_path)]
    else:
        artifact = tmp_path / "m.so"
        artifact.write_bytes(b"")
        sidecar_paths(artifact)[0].write_text(json.dumps({"target": "arm_cpu", "input_shape": [1, 1, 6, 6], "model": "m"}))
        np.savez(sidecar_paths(artifact)[1], inputs=np.zeros(1))
        args = ["deploy", str(artifact)]
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tvmquant", *args, "--rpc-tracker", empty_tracker, "--rpc-key", "nobody"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert f"no RPC server registered under key 'nobody' at tracker {empty_tracker}" in proc.stderr
    assert time.monotonic() - start < 60
