"""Every method through the whole pipeline: compiled module == quantized reference, for every weight kind;
QAT's training-time forward agrees with the exported representation at evaluation."""

import numpy as np
import pytest
import torch

from tvmquant.batching import run_batched
from tvmquant.pipeline import QuantRequest
from tvmquant.compile import compile_model, load_source
from tvmquant.kernels import registry
from tvmquant.errors import UserError
from tvmquant.models import digits
from tvmquant.quantize import QuantConfig, calibrate_activations, plan_layers
from tvmquant.reference import ReferenceModel
from tvmquant.scheme import LayerScheme, QuantScheme
from tvmquant.train import QuantForward, TrainConfig, train_quantized

from models_for_tests import run_compiled

KINDS = {"uniq": {"codebook"}, "inq": {"pow2", "uniform"}, "balanced": {"uniform"}, "multipoint": {"multipoint"},
         "qnet": {"pow2", "uniform"}}


@pytest.fixture(scope="module")
def source():
    return load_source(None)


@pytest.mark.parametrize("method", list(KINDS))
def test_every_method_compiles_and_matches_reference(method, source, tmp_path, host_target):
    result = compile_model(source, QuantConfig(3, 4, 8, method=method), host_target, tmp_path / "m.so")
    kinds = {layer.weight.kind.value for layer in result.scheme.layers.values()}
    assert kinds <= KINDS[method] and kinds & KINDS[method]
    for name, layer in result.scheme.layers.items():
        rule = registry.choose(layer, host_target.tvm_target)[0].name  # UNIFORM, POW2, CODEBOOK: auto's cost rule
        want = {"uniform": rule, "pow2": rule, "multipoint": "multipoint",
                "codebook": rule if layer.weight.bits <= 4 else "dequant"}[layer.weight.kind.value]
        if layer.weight.kind.value == "codebook" and layer.weight.bits <= 4:
            assert rule in ("lut", "onehot")
        assert result.kernels[name] == want
    compiled = run_compiled(result, source.eval_x, 1)
    ref = result.reference_outputs
    np.testing.assert_allclose(compiled, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert (ref.argmax(1) == source.eval_y).mean() >= 0.85


def test_multipoint_budget_is_kept_on_a_model(source, tmp_path, host_target):
    result = compile_model(source, QuantConfig(2, 8, 8, method="multipoint", budget=0.2), host_target, tmp_path / "m.so")
    rows = sum(int(layer.weight.coeffs.sum()) for layer in result.scheme.layers.values())
    channels = sum(layer.weight.out_channels for layer in result.scheme.layers.values())
    assert channels < rows <= channels + int(0.2 * channels)


@pytest.mark.parametrize("method", ["uniq", "inq", "balanced", "qnet"])
def test_qat_forward_agrees_with_exported_representation(method, source):
    config = QuantConfig(2, 4, 8, method=method)
    scheme = QuantScheme()
    chosen = plan_layers(source.layers, config, scheme)
    acts = calibrate_activations(source.gm, chosen, source.calib, 1)
    bits = {layer.name: w for layer, w, _ in chosen}
    before = {n: p.detach().clone() for n, p in source.gm.named_parameters()}
    gm, weights = train_quantized(
        source.gm, source.layers, bits, acts, method, digits.load_split("train"), 1,
        TrainConfig(epochs=1, lr=1e-4, batch_size=8, max_steps=6),
    )
    assert all(torch.equal(p, before[n]) for n, p in source.gm.named_parameters())  # the source is untouched
    assert any(not torch.equal(p, before[n]) for n, p in gm.named_parameters())  # the copy was trained
    for layer, _, _ in chosen:
        scheme.layers[layer.name] = LayerScheme(layer.name, layer.op, weights[layer.name], acts[layer.name],
                                                layer.stride, layer.padding)
    reference = ReferenceModel(gm, source.layers, scheme)
    forward = QuantForward(gm, source.layers, acts, exported=weights)
    x = source.eval_x[:40]
    with torch.no_grad():
        train_side = np.concatenate([forward.run(torch.from_numpy(x[i : i + 1])).numpy() for i in range(len(x))])
    ref = run_batched(reference, x, 1)
    np.testing.assert_allclose(train_side, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_post_training_methods_refuse_train(source, tmp_path, host_target):
    with pytest.raises(UserError, match="post-training only"):
        compile_model(source, QuantRequest(QuantConfig(2, 2, 8, method="multipoint"), TrainConfig(epochs=1)),
                      host_target, tmp_path / "m.so")
    with pytest.raises(UserError, match="at least 2 weight bits"):
        QuantConfig(1, 2, 8, method="inq")


def test_cli_method_train_and_errors(tmp_path, capsys):
    from tvmquant.cli import main

    out = tmp_path / "inq.so"
    assert main(["compile", "--method", "inq", "--bits", "3", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    # pow2 runs on int8 where the target has a dot instruction, else shift (INQ's 8-bit edges are uniform)
    assert "pow2 W3A3" in text and ("shift" in text or "int8" in text) and "top-1 agreement 360/360" in text
    assert main(["compile", "--train-data", "x.npz", "-o", str(out)]) == 2
    assert "only used with --train" in capsys.readouterr().err
    assert main(["compile", "--method", "multipoint", "--train", "-o", str(out)]) == 2
    assert "post-training only" in capsys.readouterr().err
    assert main(["compile", "--method", "multipoint", "--budget", "-1", "-o", str(out)]) == 2
    assert "--budget must be >= 0" in capsys.readouterr().err


def test_compile_with_training_matches_reference(source, tmp_path, host_target):
    train = TrainConfig(epochs=1, lr=1e-3, batch_size=4, max_steps=3)
    result = compile_model(source, QuantRequest(QuantConfig(2, 4, 8, method="balanced"), train), host_target,
                           tmp_path / "t.so")
    compiled = run_compiled(result, source.eval_x, 1)
    np.testing.assert_allclose(compiled, result.reference_outputs, rtol=1e-5, atol=1e-5)


def test_balanced_2bit_exact_offsets_run_on_dequant_and_half_offsets_on_bitserial(source, tmp_path, host_target):
    """2-bit Balanced grids keep each channel's mean with an exact (fractional) zero point, which only the dequant
    kernel runs; `zero_points=half` keeps the symmetric grids of the integer kernels (bit-serial, or int8 where
    auto's cost rule says so). Both equal the reference."""
    for opts, families in (((), {"dequant"}), ((("zero_points", "half"),), {"bitserial", "int8"})):
        result = compile_model(source, QuantConfig(2, 2, 8, method="balanced", options=opts), host_target,
                               tmp_path / f"{min(families)}.so")
        middle = [name for name, layer in result.scheme.layers.items() if layer.weight.bits == 2]
        assert middle and {result.kernels[name] for name in middle} <= families
        compiled = run_compiled(result, source.eval_x, 1)
        np.testing.assert_allclose(compiled, result.reference_outputs, rtol=1e-5,
                                   atol=1e-5 * np.abs(result.reference_outputs).max())
