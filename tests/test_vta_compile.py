"""VTA lowering: every layer shape and the whole model, compiled == reference bit for bit on the simulator."""

import json
from dataclasses import replace

import numpy as np
import pytest

from models_for_tests import KERNEL_SHAPES
from tvmquant.act_scale import calibrate_activation_pow2
from tvmquant.cli import main
from tvmquant.vta import arith
from tvmquant.vta.arith import VtaLayer
from tvmquant.vta.config import load_config
from tvmquant.vta.lower import Tiling, build, geometry
from tvmquant.vta.program import ProgramError
from tvmquant.vta.runtime import compile_layer, execute
from tvmquant.vta.simulator import START_ORDERS, estimate
from tvmquant.vta.tune import load_tilings, save, space, tune_layer

CONFIGS = ("default", "w4", "w2", "i4w4")


def random_layer(cfg, shape, rng, relu):
    n, c, h, w, o, k, stride, pad = shape
    op = "linear" if h == w == 1 and k == (1, 1) else "conv2d"
    lim = 1 << (cfg.wgt_bits - 1)
    weight = rng.integers(-lim, lim, (o, c, *k))
    layer = VtaLayer("l", op, weight, rng.integers(-500, 500, o), rng.integers(0, 7, o), np.ones(o, np.float32),
                     0 if relu else -(1 << cfg.inp_bits - 1), (1 << cfg.inp_bits - 1) - 1, stride, pad,
                     np.float32(1), 1 << cfg.inp_bits - 1, (1 << cfg.inp_bits) - 1)
    alim = 1 << (cfg.inp_bits - 1)
    a = rng.integers(-alim, alim, (n, c) if op == "linear" else (n, c, h, w))
    return layer, a


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("index", range(len(KERNEL_SHAPES)))
def test_layer_matches_reference_bit_for_bit(name, index):
    cfg, rng = load_config(name), np.random.default_rng(index)
    layer, a = random_layer(cfg, KERNEL_SHAPES[index], rng, relu=index % 2 == 0)
    expect = arith.requantize(arith.accumulate(a, layer), layer)
    prog = compile_layer(layer, a.shape, cfg)
    got, counters = execute(prog, a, START_ORDERS[index % 6], seed=index)
    np.testing.assert_array_equal(got, expect)
    assert counters.gemm_uops > 0 and estimate(cfg, prog.insns).cycles == counters.cycles


def test_every_start_order_and_many_tilings_agree():
    """Tilings from the tuner's space, double- and single-buffered, edge tiles and split accumulators."""
    cfg, rng = load_config("default"), np.random.default_rng(7)
    layer, a = random_layer(cfg, (2, 40, 7, 6, 36, (3, 3), (2, 1), (1, 1)), rng, relu=False)
    expect = arith.requantize(arith.accumulate(a, layer), layer)
    g = geometry(layer, a.shape, cfg.block)
    tilings = space(g, cfg)
    picks = [tilings[i] for i in rng.choice(len(tilings), 6, replace=False)] + [Tiling(1, 1, 1, 1, 2), Tiling(1, 1, 1, 3, 1)]
    for i, t in enumerate(picks):
        prog = compile_layer(layer, a.shape, cfg, t)
        for order in START_ORDERS if i < 2 else START_ORDERS[:1]:
            got, _ = execute(prog, a, order, seed=i)
            np.testing.assert_array_equal(got, expect, err_msg=f"{t} {order}")


def test_tiles_that_overflow_sram_are_refused():
    cfg = load_config("default")
    layer, a = random_layer(cfg, (1, 64, 16, 16, 64, (3, 3), (1, 1), (1, 1)), np.random.default_rng(0), False)
    g = geometry(layer, a.shape, cfg.block)
    with pytest.raises(ProgramError, match="inp tile of .* exceeds 1024"):
        build(g, Tiling(16, 16, 1, 4, 2), cfg)
    with pytest.raises(ProgramError, match="wgt tile"):
        build(g, Tiling(1, 1, 4, 4, 1), replace(cfg, log_wgt_buff_size=14))


@pytest.mark.parametrize("name", CONFIGS)
def test_default_model_on_the_simulator_is_exact(name):
    from tvmquant.compile import load_source
    from tvmquant.quantize import QuantConfig, quantize_model
    from tvmquant.vta.model import VtaReference, plan_model
    from tvmquant.vta.pipeline import vta_quant_config
    from tvmquant.vta.runtime import run_float

    cfg, source = load_config(name), load_source(None)
    qc, _ = vta_quant_config(QuantConfig(wbits=8, abits=8, first_last_bits=8), cfg)
    scheme = quantize_model(source.gm, source.layers, source.calib, qc, 1)
    layers, host = plan_model(source.gm, source.layers, scheme, cfg, source.calib)
    assert set(layers) == {"conv1", "conv2", "conv3", "fc1", "fc2"} and not host
    programs = {}

    def simulate(x, layer):
        if layer.name not in programs:
            programs[layer.name] = compile_layer(layer, x.shape, cfg)
        return run_float(programs[layer.name], x)[0]

    ref, sim = VtaReference(source.gm, source.layers, scheme, layers), VtaReference(source.gm, source.layers, scheme, layers, run_layer=simulate)
    x = source.eval_x[:12]
    for i in range(len(x)):
        np.testing.assert_array_equal(sim(x[i:i + 1]), ref(x[i:i + 1]))
    agree = np.mean([ref(x[i:i + 1]).argmax() == source.eval_y[i] for i in range(len(x))])
    if name != "w2":  # w2 holds only 1-bit symmetric weights in every layer
        assert agree >= 0.75  # the VTA arithmetic is a usable quantization, not just self-consistent


def test_low_bit_configs_move_fewer_weight_bytes_and_cycles():
    from tvmquant.compile import load_source
    from tvmquant.quantize import QuantConfig, quantize_model
    from tvmquant.vta.model import plan_model
    from tvmquant.vta.pipeline import _input_shapes, vta_quant_config

    source = load_source(None)
    totals = {}
    for name in ("default", "w4", "w2"):
        cfg = load_config(name)
        qc, _ = vta_quant_config(QuantConfig(wbits=8, abits=8, first_last_bits=8), cfg)
        scheme = quantize_model(source.gm, source.layers, source.calib, qc, 1)
        layers, _ = plan_model(source.gm, source.layers, scheme, cfg, source.calib)
        shapes = _input_shapes(source, set(layers))
        wgt = cycles = 0
        for lname, layer in layers.items():
            prog = compile_layer(layer, shapes[lname], cfg)
            c = estimate(cfg, prog.insns)
            wgt, cycles = wgt + c.load_bytes["wgt"], cycles + c.cycles
        totals[name] = (wgt, cycles)
    assert totals["w2"][0] < totals["w4"][0] < totals["default"][0]
    assert totals["w2"][1] < totals["w4"][1] < totals["default"][1]


def test_pow2_activation_scale():
    act = calibrate_activation_pow2(np.random.default_rng(0).standard_normal(1000) * 3, 8)
    assert act.zero_point == 128 and float(np.log2(act.scale)).is_integer()


def test_tuning_beats_default_and_is_applied(tmp_path):
    cfg = load_config("default")
    layer, a = random_layer(cfg, (1, 64, 14, 14, 64, (3, 3), (1, 1), (1, 1)), np.random.default_rng(0), True)
    g = geometry(layer, a.shape, cfg.block)
    result = tune_layer(g, cfg, trials=16)
    assert result.cycles < result.default_cycles
    save(tmp_path, cfg, [result])
    assert load_tilings([tmp_path], cfg) == {g.key(): result.tiling}
    got, _ = execute(compile_layer(layer, a.shape, cfg, result.tiling), a)
    np.testing.assert_array_equal(got, arith.requantize(arith.accumulate(a, layer), layer))


def test_cli_compile_run_and_bad_config(tmp_path, capsys):
    out = tmp_path / "m.so"
    code = main(["compile", "--target", "vta", "--bits", "4", "--eval-limit", "8", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "bit-exact with the reference: yes" in text and "fc2" in text
    manifest = json.loads((tmp_path / "m.so.vta" / "manifest.json").read_text())
    for layer in manifest["layers"]:
        insn = (tmp_path / "m.so.vta" / layer["instructions"]["file"]).read_bytes()
        assert len(insn) == 16 * layer["instructions"]["count"]
        assert all(b["address"] >= 4096 and b["address"] % b["element_bytes"] == 0 for b in layer["buffers"])
    assert main(["run", "--target", "vta", "--eval-limit", "4", str(out)]) == 0
    assert "bit-exact with the reference: yes" in capsys.readouterr().out
    assert main(["deploy", "--rpc", "127.0.0.1:1", str(out)]) == 2  # a board needs pynq, not RPC
    assert "pynq" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads((tmp_path / "m.so.vta" / "manifest.json").read_text())["config"], "LOG_ACC_BUFF_SIZE": 19}))
    assert main(["compile", "--target", "vta", "--vta-config", str(bad), "-o", str(tmp_path / "x.so")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "micro-op must fit 32 bits" in err[0] and not (tmp_path / "x.so").exists()


def test_relocated_programs_run_the_same_and_pynq_needs_the_board():
    """The Pynq path rebases instructions onto the board's buffer addresses: check it on the simulator."""
    from tvmquant.errors import UserError
    from tvmquant.vta.pynq import PynqRunner, relocate
    from tvmquant.vta.runtime import pack_input, unpack_output
    from tvmquant.vta.simulator import Dram, Simulator

    cfg = load_config("w4")
    layer, a = random_layer(cfg, KERNEL_SHAPES[2], np.random.default_rng(3), relu=True)
    prog = compile_layer(layer, a.shape, cfg)
    dram = Dram()
    images = prog.images | {"inp": pack_input(a, "conv2d", cfg)}
    addresses = {}
    for name in reversed(list(prog.plan)):  # other addresses, other order
        addresses[name] = dram.alloc(prog.plan[name][1] + 4096) + 4096
        if name in images:
            dram.write(addresses[name], images[name])
    Simulator(cfg, dram).run(relocate(prog.insns, prog.plan, cfg, addresses))
    got = unpack_output(dram.read(addresses["out"], prog.plan["out"][1]), prog.host, prog.geometry, cfg)
    np.testing.assert_array_equal(got, arith.requantize(arith.accumulate(a, layer), layer))
    with pytest.raises(UserError, match="pynq"):
        PynqRunner(None, "vta.bit")


@pytest.mark.slow
def test_cli_mixed_host_and_vta_layers(tmp_path, capsys):
    """First and last layer kept in float run on the host part, the others on VTA, in one artifact."""
    out = tmp_path / "mixed.so"
    code = main(["compile", "--target", "vta", "--bits", "6", "--first-last-bits", "fp32", "--eval-limit", "6", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "agreement with the quantized reference 6/6" in text
    assert "conv2        VTA" in text and "conv1        host" in text and "fc2          host" in text
    manifest = json.loads((tmp_path / "mixed.so.vta" / "manifest.json").read_text())
    assert [entry["name"] for entry in manifest["layers"]] == ["conv2", "conv3", "fc1"]
