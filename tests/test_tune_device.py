"""Tuning and deploying through an RPC tracker on emulated aarch64 servers (scripts/emulated_farm.py):
a server killed mid-run, a re-run that resumes, and deploy with two servers under one key.

Ports 9110-9119 and trackers 9192-9193, away from the default device (9091) that other tests use.
"""

import json
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from tvmquant.database import RECORDS, read_database

from models_for_tests import save_tiny

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import emulated_farm  # noqa: E402

pytestmark = pytest.mark.arm


@pytest.fixture(scope="module", autouse=True)
def device_set_up():
    if not emulated_farm.is_set_up():
        message = "emulated ARM device not set up: run bash scripts/arm64-device.sh setup"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _tune(model, calib, log_dir, tracker, key, trials, timeout):
    return [sys.executable, "-m", "tvmquant", "tune", "--target", "arm_cpu", "--model", model, "--calib", calib,
            "--rpc-tracker", tracker, "--rpc-key", key, "--log-dir", str(log_dir), "--trials", str(trials),
            "--timeout", str(timeout), "--kernel", "bitserial"]  # bitserial: the tunable family


def _successes(log_dir: Path) -> int:
    return sum(1 for line in (log_dir / RECORDS).read_text().splitlines() if max(json.loads(line)[1][1]) < 1e9)


def test_server_killed_mid_tuning_keeps_the_database_and_a_rerun_resumes(tmp_path):
    model, calib = save_tiny(tmp_path)
    log_dir, tracker, key = tmp_path / "logs", "127.0.0.1:9192", "fault"
    with emulated_farm.farm(1, key, tracker_port=9192, port=9110, name="fault") as servers:
        first = subprocess.run(_tune(model, calib, log_dir, tracker, key, 1, 120), capture_output=True, text=True, timeout=900)
        assert first.returncode == 0, first.stderr[-2000:]
        earlier = (log_dir / RECORDS).read_text()
        assert earlier and _successes(log_dir) >= 2  # a conv and a linear kernel at least

        # second run asks for more; the only server dies once candidates are on their way to it
        proc = subprocess.Popen(_tune(model, calib, log_dir, tracker, key, 3, 20), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
        reader.start()
        ms_log, deadline = log_dir / "metaschedule.log", time.monotonic() + 600
        start = ms_log.stat().st_size if ms_log.exists() else 0  # MetaSchedule's INFO lines go to this file
        while "valid sample(s) to runner" not in (ms_log.read_text()[start:] if ms_log.exists() else ""):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(output)[-2000:]
            time.sleep(0.5)
        time.sleep(2)
        servers[0].stop()
        proc.wait(timeout=900)
        reader.join(timeout=10)
        text = "".join(output)
        assert proc.returncode == 0, text[-3000:]
        assert "failed" in text

        after = (log_dir / RECORDS).read_text()
        assert after.startswith(earlier), "an earlier record was lost or rewritten"
        failures = [line for line in after.splitlines() if max(json.loads(line)[1][1]) >= 1e9]
        assert failures, "failed trials were not recorded"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert len(read_database(log_dir).get_all_tuning_records()) == len(after.splitlines())

        # the device is back: a re-run tunes what is still missing and keeps everything
        servers[0].start()
        before_rerun = _successes(log_dir)
        rerun = subprocess.run(_tune(model, calib, log_dir, tracker, key, 3, 120), capture_output=True, text=True, timeout=900)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert (log_dir / RECORDS).read_text().startswith(after)
        assert _successes(log_dir) > before_rerun


def test_deploy_through_a_tracker_with_two_servers_under_one_key(tmp_path):
    model, calib = save_tiny(tmp_path)
    artifact = tmp_path / "tiny-arm.so"
    compile_cmd = [sys.executable, "-m", "tvmquant", "compile", "--target", "arm_cpu", "--model", model,
                   "--calib", calib, "-o", str(artifact)]
    compiled = subprocess.run(compile_cmd, capture_output=True, text=True, timeout=900)
    assert compiled.returncode == 0, compiled.stderr[-2000:]
    tracker, key = "127.0.0.1:9193", "pair"
    with emulated_farm.farm(2, key, tracker_port=9193, port=9114, name="pair"):
        deploy = [sys.executable, "-m", "tvmquant", "deploy", "--rpc-tracker", tracker, "--rpc-key", key, str(artifact)]
        runs = [subprocess.Popen(deploy, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for proc in runs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-2000:]
            assert "agreement with the quantized reference 8/8" in out
            assert f"latency on arm_cpu device '{key}' via tracker {tracker}" in out
