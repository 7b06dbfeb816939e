"""ONNX models in: exported by torch.onnx (ResNet-style, depthwise) and built with onnx.helper; the converted
module computes what ONNX Runtime computes, and the compiled module agrees with the quantized reference."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tvmquant.batching import run_batched  # noqa: E402
from tvmquant.cli import main  # noqa: E402
from tvmquant.compile import compile_model, load_source  # noqa: E402
from tvmquant.errors import UserError  # noqa: E402
from tvmquant.onnx_import import load_onnx  # noqa: E402
from tvmquant.quantize import QuantConfig  # noqa: E402

from models_for_tests import WithDepthwise, randomize_bn, run_compiled  # noqa: E402


class ResNetish(torch.nn.Module):
    """Stem conv + BN + max pool, one residual block, global average pool, view(N, -1), linear, softmax."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.block = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                         torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1))
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.stem(x))), 2)
        x = F.relu(self.block(x) + x)
        x = F.adaptive_avg_pool2d(x, 1)
        return torch.softmax(self.fc(x.view(x.size(0), -1)), 1)


def _export(module, shape, path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(shape),), str(path), dynamo=False, **kw)
    return path


def _data(shape, n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape[1:])).astype(np.float32)


def _ort(path, x):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {session.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(len(x))])


def test_resnet_style_export_converts_with_pytorch_names(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(ResNetish())
    path = _export(model, (1, 3, 16, 16), tmp_path / "r.onnx")
    converted = load_onnx(path)
    assert converted.input_shape == (1, 3, 16, 16) and converted.notes == []
    names = [n for n, _ in converted.module.named_parameters()]
    assert {"stem.weight", "block.0.weight", "block.3.weight", "fc.weight"} <= set(names)
    x = _data((1, 3, 16, 16), 3)
    with torch.no_grad():
        ours = torch.cat([converted.module(torch.from_numpy(x[i:i + 1])) for i in range(3)]).numpy()
        theirs = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours, _ort(path, x), rtol=1e-5, atol=1e-6)


def test_resnet_style_onnx_compiles_and_agrees_with_reference(tmp_path, host_target):
    torch.manual_seed(1)
    path = _export(randomize_bn(ResNetish()), (1, 3, 16, 16), tmp_path / "r.onnx")
    source = load_source(str(path), calib=_data((1, 3, 16, 16), 16), eval_x=_data((1, 3, 16, 16), 6, seed=1))
    assert source.name == "r" and [layer.name for layer in source.layers] == ["stem", "block.0", "block.3", "fc"]
    result = compile_model(source, QuantConfig(2, 2, 8), host_target, tmp_path / "r.so")
    assert set(result.kernels) == {"stem", "block.0", "block.3", "fc"}
    compiled = run_compiled(result, source.eval_x, 1)
    np.testing.assert_allclose(compiled, result.reference_outputs, rtol=1e-5, atol=1e-6)
    assert np.abs(result.reference_outputs - run_batched(source.fp32, source.eval_x, 1)).max() > 1e-4


def test_depthwise_onnx_compiles_with_the_depthwise_layer_in_float(tmp_path, host_target):
    path = _export(WithDepthwise(), (1, 4, 6, 6), tmp_path / "dw.onnx")
    source = load_source(str(path), calib=_data((1, 4, 6, 6), 6))
    with pytest.warns(UserWarning, match="'dw' kept in float32: grouped convolution"):
        result = compile_model(source, QuantConfig(2, 2, 8), host_target, tmp_path / "dw.so")
    compiled = run_compiled(result, source.eval_x, 1)
    np.testing.assert_allclose(compiled, result.reference_outputs, rtol=1e-5, atol=1e-6)


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _helper_model(opset=17, extra_node=None, check=True):
    """A graph written by hand: asymmetric and SAME padding, Gemm with transB=0 and alpha/beta, Clip from
    Constant bounds, Reshape with 0 and -1, Concat, AveragePool, Sigmoid, Mul, Softmax, Identity."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    b1 = rng.standard_normal(6).astype(np.float32)
    w2 = rng.standard_normal((4, 6, 1, 1)).astype(np.float32)
    gemm_b = 0.05 * rng.standard_normal(((4 + 6) * 4 * 3, 3)).astype(np.float32)  # (in, out): transB = 0
    gemm_c = rng.standard_normal((1, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[0, 1, 1, 0]),
        helper.make_node("Constant", [], ["lo"], value=_init("lo", np.float32(0.0))),
        helper.make_node("Constant", [], ["hi"], value=_init("hi", np.float32(2.0))),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER"),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Sigmoid", ["c2"], ["s2"]),
        helper.make_node("Mul", ["s2", "c2"], ["m2"]),
        helper.make_node("AveragePool", ["p1"], ["a1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
        helper.make_node("Concat", ["m2", "a1"], ["cat"], axis=1),
        helper.make_node("Reshape", ["cat", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "gemm_b", "gemm_c"], ["g"], name="fc", alpha=0.5, beta=2.0),
        helper.make_node("Identity", ["g"], ["gi"]),
        helper.make_node("Softmax", ["gi"], ["y"], axis=1),
    ]
    if extra_node is not None:
        nodes.insert(-1, extra_node)
    graph = helper.make_graph(
        nodes, "handmade",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [_init("w1", w1), _init("b1", b1), _init("w2", w2), _init("gemm_b", gemm_b), _init("gemm_c", gemm_c),
         _init("shape", np.array([0, -1], np.int64))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if check:
        onnx.checker.check_model(model)
    return model


def test_helper_built_model_matches_onnx_runtime(tmp_path, host_target):
    path = tmp_path / "hand.onnx"
    onnx.save(_helper_model(), str(path))
    x = _data((1, 2, 8, 7), 4)
    converted = load_onnx(path)
    with torch.no_grad():
        ours = np.concatenate([converted.module(torch.from_numpy(x[i:i + 1])).numpy() for i in range(4)])
    np.testing.assert_allclose(ours, _ort(path, x), rtol=1e-5, atol=1e-6)
    source = load_source(str(path), calib=x)
    assert [layer.name for layer in source.layers] == ["conv1", "conv2", "fc"]
    result = compile_model(source, QuantConfig(4, 4, 8), host_target, tmp_path / "hand.so")
    compiled = run_compiled(result, source.eval_x, 1)
    np.testing.assert_allclose(compiled, result.reference_outputs, rtol=1e-5, atol=1e-6)


def test_unsupported_op_and_opset_are_one_line_errors(tmp_path, capsys):
    celu = _helper_model(extra_node=helper.make_node("Celu", ["gi"], ["unused"]))
    path = tmp_path / "celu.onnx"
    onnx.save(celu, str(path))
    np.save(tmp_path / "calib.npy", _data((1, 2, 8, 7), 2))
    out = tmp_path / "out" / "m.so"
    assert main(["compile", "--model", str(path), "--calib", str(tmp_path / "calib.npy"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tvmquant: error: ONNX operator 'Celu' (node '") and "\n" not in err
    assert not out.parent.exists()
    with pytest.raises(UserError, match="ONNX opset 9 is not supported"):
        from tvmquant.onnx_import import convert

        convert(_helper_model(opset=9, check=False))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a protobuf\xff" * 3)
    with pytest.raises(UserError, match="is not a readable ONNX model"):
        load_onnx(junk)


def test_external_data_only_from_the_models_folder(tmp_path):
    from onnx.external_data_helper import convert_model_to_external_data

    model = _helper_model()
    onnx.save(model, str(tmp_path / "plain.onnx"))
    folder = tmp_path / "model"
    folder.mkdir()
    convert_model_to_external_data(model, location="weights.bin", size_threshold=0)
    onnx.save(model, str(folder / "m.onnx"))
    assert (folder / "weights.bin").is_file()
    x = _data((1, 2, 8, 7), 1)
    with torch.no_grad():
        y = load_onnx(folder / "m.onnx").module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, _ort(tmp_path / "plain.onnx", x), rtol=1e-5, atol=1e-6)

    (tmp_path / "secret.bin").write_bytes((folder / "weights.bin").read_bytes())
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    onnx.save(model, str(folder / "evil.onnx"))
    with pytest.raises(UserError, match="external data '../secret.bin' of tensor .* must be a file inside"):
        load_onnx(folder / "evil.onnx")


def test_qdq_model_from_onnx_runtime_is_requantized_with_a_note(tmp_path, host_target):
    quantization = pytest.importorskip("onnxruntime.quantization")
    torch.manual_seed(2)
    fp32 = _export(randomize_bn(ResNetish()), (1, 3, 16, 16), tmp_path / "fp32.onnx")
    calib = _data((1, 3, 16, 16), 8)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input.1": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    qdq = tmp_path / "qdq.onnx"
    quantization.quantize_static(str(fp32), str(qdq), Reader(), quant_format=quantization.QuantFormat.QDQ)
    source = load_source(str(qdq), calib=calib)
    assert source.notes and "re-quantized by tvmquant" in source.notes[0]
    assert [layer.name for layer in source.layers] == ["stem", "block.0", "block.3", "fc"]
    # the weights are the dequantized int8 ones: close to, not equal to, the float model's
    result = compile_model(source, QuantConfig(4, 4, 8), host_target, tmp_path / "q.so")
    compiled = run_compiled(result, source.eval_x, 1)
    np.testing.assert_allclose(compiled, result.reference_outputs, rtol=1e-5, atol=1e-6)
