import numpy as np
import pytest
import torch

from tvmquant import frontend, validate
from tvmquant.errors import UserError

from models_for_tests import Awkward, WithDepthwise, randomize_bn


def test_batchnorm_folding_preserves_outputs():
    torch.manual_seed(0)
    model = randomize_bn(Awkward())
    ep = frontend.export_module(model, (2, 3, 9, 4))
    gm, folded = frontend.prepare(ep, (2, 3, 9, 4))
    assert folded == ["conv1", "conv2"]
    assert not any("batch_norm" in str(n.target) for n in gm.graph.nodes)
    x = torch.randn(2, 3, 9, 4)
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


def test_layers_found_with_geometry():
    ep = frontend.export_module(Awkward().eval(), (1, 3, 9, 4))
    gm, _ = frontend.prepare(ep, (1, 3, 9, 4))
    layers = {layer.name: layer for layer in frontend.find_layers(gm)}
    assert list(layers) == ["conv1", "conv2", "fc1", "fc2"]
    assert layers["conv2"].stride == (2, 2) and layers["conv2"].padding == (1, 1)
    assert layers["fc1"].op == "linear" and layers["conv1"].unsupported is None


def test_grouped_conv_marked_unsupported():
    ep = frontend.export_module(WithDepthwise().eval(), (1, 4, 6, 6))
    gm, _ = frontend.prepare(ep, (1, 4, 6, 6))
    layers = {layer.name: layer for layer in frontend.find_layers(gm)}
    assert "groups=8" in layers["dw"].unsupported


def test_relax_params_keep_pytorch_names():
    ep = frontend.export_module(Awkward().eval(), (1, 3, 9, 4))
    gm, _ = frontend.prepare(ep, (1, 3, 9, 4))
    _, params, fqn = frontend.to_relax(gm, (1, 3, 9, 4))
    assert {"conv1.weight", "conv1.bias", "conv2.bias", "fc2.weight"} <= set(fqn.values())
    name = next(k for k, v in fqn.items() if v == "fc1.weight")
    np.testing.assert_array_equal(params[name], gm.get_parameter("fc1.weight").detach().numpy())


def test_missing_corrupt_and_foreign_archives(tmp_path):
    with pytest.raises(UserError, match="not found"):
        frontend.load_exported(tmp_path / "nope.pt2")
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="not a torch.export archive"):
        frontend.load_exported(junk)
    import zipfile

    foreign = tmp_path / "foreign.pt2"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("hello.txt", "not a model")
    with pytest.raises(UserError, match="not a readable torch.export archive"):
        frontend.load_exported(foreign)


def test_unsupported_operator_is_named():
    class Det(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 8)

        def forward(self, x):
            return torch.linalg.det(self.fc(x).reshape(2, 2, 2))

    ep = frontend.export_module(Det(), (1, 8))
    gm, _ = frontend.prepare(ep, (1, 8))
    with pytest.raises(UserError, match="linalg_det"):
        frontend.to_relax(gm, (1, 8))


def test_calibration_shape_checked():
    with pytest.raises(UserError, match=r"expected \(N, 3, 9, 4\)"):
        validate.model_input(np.zeros((4, 3, 9, 9)), (1, 3, 9, 4))
