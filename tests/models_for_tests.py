"""Small models with awkward shapes, shared by the tests."""

import numpy as np
import torch
import torch.nn.functional as F

# Kernel test shapes (N, C, H, W, O, kernel, stride, padding), awkward on purpose: K not a multiple of a word,
# a vector or a group, odd channel counts, stride 2, padding, batch > 1, dense layers (1x1 conv on a 1x1 image)
# with K = 70 and K = 130.
KERNEL_SHAPES = [
    (1, 3, 7, 9, 5, (3, 3), (2, 2), (1, 1)),
    (3, 70, 1, 1, 13, (1, 1), (1, 1), (0, 0)),
    (2, 17, 6, 5, 24, (3, 3), (1, 1), (1, 1)),
    (1, 9, 8, 8, 7, (3, 3), (2, 2), (0, 0)),
    (2, 130, 1, 1, 33, (1, 1), (1, 1), (0, 0)),
]


class Awkward(torch.nn.Module):
    """Odd channel counts, stride 2, padding, BatchNorm, K = 5*3*3 = 45 and a linear with K = 70."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 5, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(5)
        self.conv2 = torch.nn.Conv2d(5, 7, 3, stride=2, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(7)
        self.fc1 = torch.nn.Linear(7 * 5 * 2, 13)
        self.fc2 = torch.nn.Linear(13, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class WithDepthwise(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = torch.nn.Linear(8 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.dw(F.relu(self.conv(x)))), 1))


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics so that folding is really exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


class Tiny(torch.nn.Module):
    """One conv and one linear on a 1x6x6 input: the fewest tuning tasks that still cover both kernels."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


def save_tiny(folder) -> tuple[str, str]:
    """Tiny as a torch.export archive plus calibration data, for the command line: (model.pt2, calib.npy)."""
    import numpy as np

    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(1, 1, 6, 6)
    pt2, calib = folder / "tiny.pt2", folder / "calib.npy"
    torch.export.save(torch.export.export(model, (x,)), pt2)
    np.save(calib, np.random.default_rng(0).standard_normal((8, 1, 6, 6)).astype(np.float32))
    return str(pt2), str(calib)


def awkward_source(seed: int, batch: int = 1, evaluate: int = 4):
    """The Awkward model with random BatchNorm statistics, ready to compile, with 8 random calibration inputs."""
    from tvmquant.compile import load_source

    calib = np.random.default_rng(seed).standard_normal((8, 3, 9, 4)).astype(np.float32)
    return load_source(randomize_bn(Awkward(), seed=3), (batch, 3, 9, 4), calib=calib, eval_x=calib[:evaluate])


def run_kernel(call, x: np.ndarray, geometry, target, lib, session=None, folder=None) -> np.ndarray:
    """Run a compiled KernelCall (`lib`) on `x` here, or cross-compiled on the RPC `session` (linked in
    `folder`); the float32 (N, O, OH, OW) output."""
    import tvm
    from tvm.support import cc

    if session is None:
        dev, module = tvm.cpu(), lib
    else:
        path = folder / "kernel.so"
        lib.export_library(str(path), fcompile=cc.cross_compiler(target.cross_compiler))
        session.upload(str(path))
        dev, module = session.cpu(), session.load_module(path.name)
    out = np.zeros((geometry.batch, geometry.out_channels, *geometry.out_hw), np.float32)
    args = [tvm.runtime.tensor(a, dev) for a in (x, *call.consts, out)]
    module(*args)
    return args[-1].numpy()


def layer_reference(x: np.ndarray, layer) -> np.ndarray:
    """The quantized PyTorch layer's float32 output (N, O, OH, OW): a linear layer's as (N, O, 1, 1)."""
    from tvmquant.reference import quantized_layer

    xt = torch.from_numpy(x if layer.op == "conv2d" else x.reshape(len(x), -1))
    out = quantized_layer(xt, layer, None).numpy()
    return out.reshape(out.shape + (1, 1)) if layer.op == "linear" else out


def run_call(call, x: np.ndarray, out_shape: tuple[int, ...], target) -> np.ndarray:
    """Compile a scheduled KernelCall for `target` (a tvm Target) and run it here on `x`."""
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": call.prim}), target)
    out = tvm.runtime.tensor(np.zeros(out_shape, np.float32))
    lib(*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in (x, *call.consts)], out)
    return out.numpy()


def run_compiled(result, x, batch: int):
    """The compiled artifact of a CompileResult run here, through the one device-run path."""
    from tvmquant.device_run import DeviceAddress, run_on_device

    return run_on_device(result.target, result.artifact, x, batch, DeviceAddress()).outputs


class Residual(torch.nn.Module):
    """ResNet-shaped: stem + BN + max pool, an identity-residual basic block, a stride-2 block with a 1x1
    projection, global average pool, linear. 64-96 channels, so `auto` runs the inner convs bit-serially at
    W2A2 (the 8-bit stem and fc on int8): residual adds, ReLUs and pooling between quantized layers."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.BatchNorm2d(64)
        self.b1c1, self.b1c2 = torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.Conv2d(64, 64, 3, padding=1)
        self.b2c1 = torch.nn.Conv2d(64, 96, 3, stride=2, padding=1)
        self.b2c2 = torch.nn.Conv2d(96, 96, 3, padding=1)
        self.down = torch.nn.Conv2d(64, 96, 1, stride=2)
        self.fc = torch.nn.Linear(96, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.stem(x))), 2)
        x = F.relu(self.b1c2(F.relu(self.b1c1(x))) + x)
        x = F.relu(self.b2c2(F.relu(self.b2c1(x))) + self.down(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
