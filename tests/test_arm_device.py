"""arm_cpu artifacts on the emulated aarch64 device (TVM's RPC server under qemu), checked against the reference."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tvmquant.compile import compile_model, load_source
from tvmquant.device_run import DeviceAddress, run_on_device
from tvmquant.errors import UserError
from tvmquant.quantize import QuantConfig
from tvmquant.rpc import DeviceModule, connect
from tvmquant.target import load_target

from models_for_tests import Awkward, randomize_bn

pytestmark = pytest.mark.arm
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "arm64-device.sh"
ADDRESS = "127.0.0.1:9091"


def _device_script(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def arm_device():
    """The emulated device on 127.0.0.1:9091: reused if running, else started here and stopped afterwards."""
    status = _device_script("status")
    if "setup: done" not in status.stdout:
        message = "emulated ARM device not set up: run bash scripts/arm64-device.sh setup"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    started_here = status.returncode != 0
    if started_here:
        start = _device_script("start")
        assert start.returncode == 0, start.stderr
    elif not re.search(r"port=9091 tracker= ", status.stdout):
        pytest.fail(f"a device with other settings is running ({status.stdout.strip()}); stop it first")
    yield ADDRESS
    if started_here:
        _device_script("stop")


@pytest.mark.parametrize("linker,shown", [("system", "aarch64-linux-gnu-gcc (system)"), ("zig", "zig cc -target aarch64")])
def test_default_compile_runs_on_device(arm_device, tmp_path, linker, shown):
    """The README's main job, linked by the Debian cross compiler or by the pip zig (a fresh machine)."""
    out = tmp_path / "digits-arm.so"
    cmd = [sys.executable, "-m", "tvmquant", "compile", "--target", "arm_cpu", "--bits", "2", "-o", str(out)]
    env = {**os.environ, "TVMQUANT_LINKER": linker}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"linked with {shown}" in proc.stdout
    assert f"on arm_cpu device at {arm_device}" in proc.stdout
    assert "top-1 agreement 360/360" in proc.stdout

    cmd = [sys.executable, "-m", "tvmquant", "run", "--target", "arm_cpu", "--rpc", arm_device, str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "agreement with the quantized reference 360/360" in proc.stdout
    assert f"latency on arm_cpu device at {arm_device}" in proc.stdout


@pytest.mark.parametrize("wbits,abits", [(1, 1), (2, 2), (3, 4)])
def test_awkward_shapes_match_reference_on_aarch64(arm_device, tmp_path, wbits, abits):
    rng = np.random.default_rng(wbits)
    calib = rng.standard_normal((8, 3, 9, 4)).astype(np.float32)
    source = load_source(randomize_bn(Awkward(), seed=3), (1, 3, 9, 4), calib=calib, eval_x=calib[:4])
    result = compile_model(source, QuantConfig(wbits, abits, None), load_target("arm_cpu"), tmp_path / "a.so")
    compiled = run_on_device(result.target, result.artifact, source.eval_x, 1, DeviceAddress(rpc=arm_device)).outputs
    ref = result.reference_outputs
    np.testing.assert_allclose(compiled, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_device_really_is_aarch64(arm_device, tmp_path):
    calib = np.random.default_rng(0).standard_normal((4, 3, 9, 4)).astype(np.float32)
    source = load_source(Awkward().eval(), (1, 3, 9, 4), calib=calib)
    result = compile_model(source, QuantConfig(2, 2, 8), load_target("x86"), tmp_path / "host.so")
    session = connect(arm_device)
    with pytest.raises(UserError, match="could not load"):
        DeviceModule.remote(session, result.artifact, session.cpu())
