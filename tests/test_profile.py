"""`run --profile`: per-function times from the VM instrument hook, every kernel of the model listed once per
run, slowest first; refused for targets that run over RPC."""

import subprocess
import sys

import numpy as np

from tvmquant.compile import compile_model
from tvmquant.profile import profile
from tvmquant.quantize import QuantConfig
from tvmquant.rpc import DeviceModule

from models_for_tests import awkward_source


def test_profile_lists_every_kernel_sorted(tmp_path, host_target):
    source = awkward_source(1)
    result = compile_model(source, QuantConfig(2, 2, 8), host_target, tmp_path / "m.so")
    rows = profile(DeviceModule.local(result.artifact), source.eval_x[:1], runs=3)
    names = [r.name for r in rows]
    kernels = {f"{family}_{layer}" for layer, family in result.kernels.items()}
    assert kernels <= set(names), (kernels, names)
    assert all(r.calls == 1 for r in rows if r.name in kernels)
    assert [r.ms for r in rows] == sorted((r.ms for r in rows), reverse=True) and rows[-1].ms > 0
    assert np.isclose(sum(r.share for r in rows), 1.0)
    assert not any(r.name.startswith("vm.builtin.") for r in rows)


def test_profile_needs_a_local_target(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tvmquant", "run", "--target", "arm_cpu", "--profile",
                           str(tmp_path / "m.so")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--profile" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
