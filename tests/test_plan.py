"""The per-layer budget planner: the solver is optimal, the chosen plan fits the budget in deployed bytes and
compiles to a module equal to the reference, plan files round-trip and bad ones are refused in one line."""

import itertools
import json

import numpy as np
import pytest
from models_for_tests import run_compiled

from tvmquant import plan as plan_file
from tvmquant.cli import main
from tvmquant.compile import compile_model, load_source
from tvmquant.errors import UserError
from tvmquant.plan import FLOAT, LayerChoice, Plan
from tvmquant.plan_apply import quantize_planned
from tvmquant.plan_search import measure_options
from tvmquant.pipeline import QuantRequest
from tvmquant.plan_solve import pareto, solve
from tvmquant.quantize import QuantConfig, quantize_model

LAYERS = ["conv1", "conv2", "conv3", "fc1", "fc2"]


@pytest.fixture(scope="module")
def source():
    return load_source(None)


@pytest.fixture(scope="module")
def options(source, host_target):
    """A reduced option set (three methods, three weight widths, two activation widths) to keep this fast."""
    return measure_options(source.gm, source.layers, source.calib, QuantConfig(), source.batch_size,
                           host_target, methods=("uniform", "inq", "uniq"), wbits=(2, 4, 8), abits=(2, 8), progress=lambda _: None)


def _fp32_bytes(source) -> int:
    return sum(4 * source.gm.get_parameter(info.weight).numel() for info in source.layers)


def test_solver_is_optimal_on_random_instances():
    rng = np.random.default_rng(0)
    for _ in range(30):
        opts = {f"l{i}": [LayerChoice("uniform", 2, 2, bytes=int(b), error=float(e))
                          for b, e in zip(rng.integers(1, 100, 4), rng.random(4))] for i in range(4)}
        budget = int(rng.integers(10, 300))
        best = min((combo for combo in itertools.product(*opts.values()) if sum(o.bytes for o in combo) <= budget),
                   key=lambda combo: sum(o.error for o in combo), default=None)
        if best is None:
            with pytest.raises(UserError, match="below the smallest plan"):
                solve(opts, budget)
            continue
        got = solve(opts, budget)
        assert sum(o.bytes for o in got.values()) <= budget
        assert sum(o.error for o in got.values()) == pytest.approx(sum(o.error for o in best), abs=1e-9)


def test_pareto_drops_only_dominated_options():
    a, b, c = (LayerChoice("uniform", w, 8, bytes=n, error=e) for w, n, e in ((2, 10, 0.5), (4, 20, 0.6), (8, 30, 0.1)))
    assert pareto([a, b, c]) == [a, c]


def test_options_report_real_deployed_bytes(source, options):
    fc1 = options["fc1"]
    assert fc1[0].label() == "float32" and fc1[0].bytes == 4 * 512 * 64 and fc1[0].error == 0
    assert all(o.bytes < fc1[0].bytes for o in fc1[1:])  # nothing float32 beats is kept
    serial = [o for o in fc1 if o.family == "bitserial"]
    assert serial and all(o.bytes > o.wbits * 512 * 64 // 8 for o in serial)  # packed planes + per-channel data
    assert {o.family for o in fc1[1:]} >= {"bitserial", "int8"}  # x86 with VNNI: pow2 and 8-bit layers on int8
    widths = {o.label(): o.error for o in fc1}
    assert widths["uniform W2A8"] > widths["uniform W8A8"]


@pytest.mark.parametrize("slack", [0.05, 0.5])
def test_plan_fits_budget_and_compiled_equals_reference(slack, source, options, tmp_path, host_target):
    # quantized wherever an option beats float32 (conv1, one input channel, has none on x86)
    quantized_only = {name: [o for o in opts if o.method != FLOAT] or opts for name, opts in options.items()}
    smallest = sum(min(o.bytes for o in opts) for opts in quantized_only.values())
    budget = int(smallest * (1 + slack))  # a tight budget and a looser one: different plans
    chosen = solve(quantized_only, budget)
    request = QuantRequest(QuantConfig(), plan=Plan(source.name, chosen, budget, _fp32_bytes(source)))
    result = compile_model(source, request, host_target, tmp_path / "m.so")
    floats = sum(c.bytes for c in chosen.values() if c.is_float)
    deployed = sum(result.lowered.const_bytes.values()) + floats
    assert deployed <= budget
    assert deployed == result.plan.predicted_bytes == sum(c.bytes for c in chosen.values())
    assert result.kernels == {n: c.family for n, c in chosen.items() if not c.is_float}
    assert set(result.scheme.kept_float) == {n for n, c in chosen.items() if c.is_float}
    for name, choice in ((n, c) for n, c in chosen.items() if not c.is_float):
        layer = result.scheme.layers[name]
        assert (layer.weight.bits, layer.act.bits) == (choice.wbits, choice.abits)
    compiled = run_compiled(result, source.eval_x, source.batch_size)
    np.testing.assert_array_equal(compiled, result.reference_outputs)
    assert (result.reference_outputs.argmax(1) == source.eval_y).mean() >= 0.95


def test_uniform_plan_equals_plain_config(source):
    config = QuantConfig(4, 8, first_last_bits=4)
    plain = quantize_model(source.gm, source.layers, source.calib, config, source.batch_size)
    same = Plan(source.name, {n: LayerChoice("uniform", 4, 8) for n in LAYERS})
    planned = quantize_planned(source.gm, source.layers, source.calib, same, QuantConfig(), source.batch_size)
    for name in LAYERS:
        np.testing.assert_array_equal(planned.layers[name].weight.codes, plain.layers[name].weight.codes)
        assert planned.layers[name].act == plain.layers[name].act


def test_plan_json_round_trip(options):
    chosen = solve(options, 60000)
    plan = Plan("digits_cnn", chosen, 60000, 189504)
    back = plan_file.parse(json.loads(plan_file.to_json(plan)), LAYERS)
    assert back.layers == plan.layers and (back.budget_bytes, back.fp32_bytes) == (60000, 189504)


def _doc(**layer_overrides) -> dict:
    layers = {n: {"method": "uniform", "wbits": 4, "abits": 8} for n in LAYERS}
    layers.update(layer_overrides)
    return {"tvmquant_plan": 1, "model": "digits_cnn", "layers": layers}


BAD_PLANS = {
    "not an object": [1, 2],
    "wrong version": {**_doc(), "tvmquant_plan": 7},
    "unknown top key": {**_doc(), "exec": "rm -rf /"},
    "missing layer": {"tvmquant_plan": 1, "layers": {n: {"method": "fp32"} for n in LAYERS[1:]}},
    "extra layer": _doc(fc9={"method": "fp32"}),
    "unknown method": _doc(conv1={"method": "magic", "wbits": 4, "abits": 4}),
    "bits out of range": _doc(conv2={"method": "uniform", "wbits": 9, "abits": 4}),
    "bits as text": _doc(conv2={"method": "uniform", "wbits": "4", "abits": 4}),
    "bits as bool": _doc(conv2={"method": "uniform", "wbits": True, "abits": 4}),
    "inq at 1 bit": _doc(fc1={"method": "inq", "wbits": 1, "abits": 4}),
    "unknown family": _doc(fc1={"method": "uniform", "wbits": 2, "abits": 2, "family": "gpu"}),
    "float with bits": _doc(fc2={"method": "fp32", "wbits": 4}),
    "negative bytes": _doc(fc2={"method": "uniform", "wbits": 4, "abits": 4, "bytes": -1}),
    "layer key typo": _doc(fc2={"method": "uniform", "wbit": 4, "abits": 4}),
    "layers a list": {"tvmquant_plan": 1, "layers": []},
}


@pytest.mark.parametrize("case", list(BAD_PLANS))
def test_bad_plan_documents_are_refused(case):
    with pytest.raises(UserError) as info:
        plan_file.parse(BAD_PLANS[case], LAYERS, "p.json")
    assert "\n" not in str(info.value)


def test_bad_plan_files_one_line_exit_2_nothing_written(tmp_path, capsys):
    out = tmp_path / "m.so"
    cases = {"garbage.json": b"{not json", "binary.json": b"\xff\xfe\x00", "family.json":
             json.dumps(_doc(fc1={"method": "uniform", "wbits": 8, "abits": 8, "family": "lut"})).encode()}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        assert main(["compile", "--plan-in", str(tmp_path / name), "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("tvmquant: error:") and "\n" not in err and "Traceback" not in err
        assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--plan", "p.json"], "--plan saves a plan"),
    (["--budget-ratio", "0.1", "--train"], "post-training"),
    (["--budget-ratio", "0.1", "--budget-bytes", "100"], "not allowed with"),
    (["--budget-ratio", "-1"], "must be a number"),
    (["--budget-bytes", "0"], "positive number of bytes"),
    (["--budget-bytes", "10"], "below the smallest plan"),
])
def test_budget_flag_mistakes(argv, message, tmp_path, capsys):
    assert main(["compile", *argv, "-o", str(tmp_path / "m.so")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "m.so").exists() and not (tmp_path / "p.json").exists()
