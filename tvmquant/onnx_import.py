"""ONNX in: a `.onnx` file becomes a torch module that computes the same function, so that everything
downstream (torch.export, BatchNorm folding, the quantization methods, the PyTorch reference) is unchanged.

Why ONNX -> torch and not ONNX -> Relax: the methods, the calibration and the correctness reference all work on
the FX graph (layers found as `aten.conv2d` / `aten.linear` calls with parameter weights); a Relax import would
need a second reference and a second layer finder. The converter is small and explicit: each supported ONNX
operator maps to one torch call, evaluated once on zeros of the static input shape so that shape arithmetic
(`Shape`, `Gather`, `Concat` of constants, ...) folds to constants, and the float initializers that feed
runtime nodes become parameters named after the layer that uses them.

Supported: default-domain opsets 11-23 (`OPSETS`) and the operators in `_OPS`. Loading uses protobuf only
(`onnx.load(..., load_external_data=False)`); external tensor data is read only from files inside the model's
own folder.

Pre-quantized QDQ models (ONNX Runtime's `quantize_static`): their weights are dequantized to float
(`DequantizeLinear` on constants folds), their activation QuantizeLinear/DequantizeLinear pairs are dropped, and
the model is re-quantized by tvmquant's method and calibration; its own scales are not used (`OnnxModel.notes`).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import UserError

if TYPE_CHECKING:
    import onnx
    import torch

OPSETS = range(11, 24)


@dataclass
class OnnxModel:
    """The converted module, the model's static input shape, and what the user should know about it."""

    module: "torch.nn.Module"
    input_shape: tuple[int, ...]
    notes: list[str] = field(default_factory=list)


def load_onnx(path: str | Path, input_shape: tuple[int, ...] | None = None) -> OnnxModel:
    """Read and convert an ONNX file; every problem a user can fix is a one-line UserError."""
    model = read_model(Path(path))
    return convert(model, input_shape)


def read_model(path: Path) -> "onnx.ModelProto":
    """Parse the protobuf (no code runs) and load external tensor data only from inside the model's folder."""
    try:
        import onnx
        from onnx import external_data_helper
    except ImportError:
        raise UserError("reading .onnx models needs the onnx package: pip install 'tvmquant[onnx]'") from None
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UserError(f"{path} is not a readable ONNX model: {type(exc).__name__}: {_first_line(exc)}") from exc
    folder = path.resolve().parent
    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node for a in n.attribute if a.HasField("t")]
    for tensor in tensors:
        if not external_data_helper.uses_external_data(tensor):
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder) or not target.is_file():
            raise UserError(f"{path}: external data '{location}' of tensor '{tensor.name}' must be a file inside {folder}")
        try:
            external_data_helper.load_external_data_for_tensor(tensor, str(folder))
        except Exception as exc:
            raise UserError(f"{path}: cannot read external data of tensor '{tensor.name}': {_first_line(exc)}") from exc
    return model


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def convert(model: "onnx.ModelProto", input_shape: tuple[int, ...] | None = None) -> OnnxModel:
    """ONNX graph -> torch module, checked by running it once on zeros of the input shape."""
    import torch
    from onnx import numpy_helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset not in OPSETS:
        raise UserError(f"ONNX opset {opset} is not supported (supported: {OPSETS.start}-{OPSETS.stop - 1})")
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise UserError(f"only single-input, single-output ONNX models are supported; this one has "
                        f"{len(inputs)} inputs and {len(graph.output)} outputs")
    shape = input_shape or _declared_shape(inputs[0])
    module = _module_class()(inputs[0].name, graph.output[0].name)
    builder = _Builder(module, consts, opset)
    env: dict[str, Any] = {inputs[0].name: torch.zeros(shape)}
    with torch.no_grad():
        for index, node in enumerate(graph.node):
            builder.add(node, index, env)
    if graph.output[0].name not in env or not isinstance(env[graph.output[0].name], torch.Tensor):
        raise UserError("the ONNX model's output does not depend on its input")
    return OnnxModel(module, tuple(shape), builder.notes())


def _declared_shape(value_info) -> tuple[int, ...]:
    dims = value_info.type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    if not shape or any(d is None or d < 1 for d in shape):
        named = tuple(d.dim_param or "?" if not d.HasField("dim_value") else d.dim_value for d in dims)
        raise UserError(f"the ONNX model's input shape {named} is dynamic; pass --input-shape, e.g. 1,3,224,224")
    return shape


@dataclass
class _Step:
    """One runtime node: its handler, where each argument comes from, and the names of its outputs."""

    fn: Callable
    args: list[tuple[str, Any]]  # ("env", name) | ("param", fqn) | ("static", value)
    outputs: list[str]


@functools.cache
def _module_class():
    import torch

    class _OnnxModule(torch.nn.Module):
        """Replays the runtime steps; parameters are read with getattr so that torch.export sees them."""

        def __init__(self, input_name: str, output_name: str):
            super().__init__()
            self.input_name, self.output_name = input_name, output_name
            self.steps: list[_Step] = []

        def forward(self, x):
            env = {self.input_name: x}
            for step in self.steps:
                _run_step(self, step, env)
            return env[self.output_name]

    return _OnnxModule


def _run_step(module, step: _Step, env: dict) -> None:
    args = []
    for kind, value in step.args:
        if kind == "env":
            args.append(env[value])
        elif kind == "param":
            args.append(module.get_parameter(value))
        else:
            args.append(value)
    outs = step.fn(*args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    for name, out in zip(step.outputs, outs):
        env[name] = out


class _Builder:
    """Walks the nodes once: folds nodes whose inputs are all constant, records the others as steps."""

    def __init__(self, module, consts: dict[str, np.ndarray], opset: int):
        self.module, self.consts, self.opset = module, consts, opset
        self.param_of: dict[tuple[str, str], str] = {}  # (onnx name, transform) -> fqn
        self.used_names: set[str] = set()
        self.qdq_weights = 0
        self.qdq_activations = 0

    def add(self, node, index: int, env: dict) -> None:
        import torch

        op = node.op_type
        if node.domain not in ("", "ai.onnx") or op not in _OPS:
            where = f"{node.domain}." if node.domain not in ("", "ai.onnx") else ""
            raise UserError(f"ONNX operator '{where}{op}' (node '{node.name or index}') is not supported; "
                            f"supported: {', '.join(sorted(_OPS))}")
        spec = _OPS[op]
        attrs = _attributes(node)
        attrs["_opset"] = self.opset
        attrs["_const"] = frozenset(pos for pos, n in enumerate(node.input) if n in self.consts)
        names = list(node.input)
        runtime = [n for n in names if n and n not in self.consts]
        for n in runtime:
            if n not in env:
                raise UserError(f"ONNX node '{node.name or index}' ({op}) reads '{n}', which nothing produces before it")
        if op == "Shape":
            source = env[names[0]] if names[0] in env else self.consts[names[0]]
            self._set_consts(node, (np.array(tuple(source.shape), dtype=np.int64)[_shape_slice(attrs)],))
            return
        if op in ("QuantizeLinear", "DequantizeLinear"):
            self.qdq_weights += not runtime and op == "DequantizeLinear"
            self.qdq_activations += bool(runtime) and op == "QuantizeLinear"
        if not runtime:
            args = [torch.from_numpy(np.array(self.consts[n])) if n else None for n in names]
            outs = spec.fn(attrs, *args)
            outs = outs if isinstance(outs, tuple) else (outs,)
            self._set_consts(node, tuple(o.numpy() if isinstance(o, torch.Tensor) else np.asarray(o) for o in outs))
            return
        layer = _layer_name(node, index, op) if spec.weights else None
        step_args: list[tuple[str, Any]] = [("static", attrs)]
        for pos, n in enumerate(names):
            if not n:
                step_args.append(("static", None))
            elif n not in self.consts:
                step_args.append(("env", n))
            elif pos in spec.static:
                step_args.append(("static", self.consts[n]))
            else:
                step_args.append(("param", self._param(n, op, pos, attrs, layer)))
        step = _Step(spec.fn, step_args, [o for o in node.output if o])
        try:
            _run_step(self.module, step, env)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"ONNX node '{node.name or index}' ({op}) cannot run on the input shape: "
                            f"{_first_line(exc)}") from exc
        self.module.steps.append(step)

    def _set_consts(self, node, values: tuple[np.ndarray, ...]) -> None:
        for name, value in zip(node.output, values):
            if name:
                self.consts[name] = value

    def _param(self, name: str, op: str, pos: int, attrs: dict, layer: str | None) -> str:
        """Register constant input `pos` of an `op` node as a parameter (transformed as the op needs)."""
        import torch

        role = _OPS[op].weights.get(pos) if layer else None
        value, transform = np.asarray(self.consts[name]), ""
        if op == "Gemm" and pos == 1:
            value, transform = _gemm_weight(value, attrs), "gemm"
        elif op == "Gemm" and pos == 2:
            value, transform = attrs.get("beta", 1.0) * value, "gemm"
            if value.ndim == 2 and value.shape[0] == 1:
                value = value.reshape(-1)
        elif op == "MatMul" and pos == 1 and value.ndim == 2:
            value, transform = value.T, "matmul"
        key = (name, transform)
        if key in self.param_of:
            return self.param_of[key]
        fqn = self._fresh(f"{layer}.{role}" if role else "const." + _identifier(name))
        owner, _, attr = fqn.rpartition(".")
        parent = self.module
        for part in owner.split(".") if owner else []:
            if not hasattr(parent, part):
                parent.add_module(part, torch.nn.Module())
            parent = getattr(parent, part)
        tensor = torch.from_numpy(np.array(value))  # a writable copy
        if not tensor.is_floating_point():
            raise UserError(f"ONNX initializer '{name}' ({tensor.dtype}) feeds {op} input {pos}, which needs a float tensor")
        parent.register_parameter(attr, torch.nn.Parameter(tensor.float(), requires_grad=False))
        self.param_of[key] = fqn
        return fqn

    def _fresh(self, fqn: str) -> str:
        name, i = fqn, 1
        while name in self.used_names:
            owner, _, attr = fqn.rpartition(".")
            name = f"{owner}_{i}.{attr}" if owner else f"{attr}_{i}"
            i += 1
        self.used_names.add(name)
        return name

    def notes(self) -> list[str]:
        if not (self.qdq_weights or self.qdq_activations):
            return []
        return [f"pre-quantized QDQ model: its {self.qdq_weights} dequantized weight(s) and "
                f"{self.qdq_activations} activation QuantizeLinear/DequantizeLinear pair(s) were read as float "
                "and the model was re-quantized by tvmquant; the model's own scales are not used"]


def _attributes(node) -> dict:
    from onnx import helper, numpy_helper

    out = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if hasattr(value, "dims"):  # a TensorProto (Constant's value)
            value = numpy_helper.to_array(value)
        out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


def _shape_slice(attrs: dict) -> slice:
    return slice(attrs.get("start", 0), attrs.get("end"))


def _identifier(name: str) -> str:
    """An ONNX name as one module attribute: '/layer1/conv/Conv' -> 'layer1_conv_Conv'."""
    text = re.sub(r"[^0-9A-Za-z_]", "_", name).strip("_")
    return text or "value"


def _layer_name(node, index: int, op: str) -> str:
    """The layer's name in summaries and sidecars, from the ONNX node name: torch.onnx's scope path
    '/layer1/layer1.0/conv1/Conv' -> 'layer1.0.conv1', 'conv1' -> 'conv1'; unnamed nodes get 'conv3', 'gemm7'."""
    parts = [p for p in node.name.split("/") if p]
    if len(parts) > 1 and parts[-1].split("_")[0] == op:
        parts = parts[:-1]
    dotted = [i for i, p in enumerate(parts) if "." in p]
    parts = parts[dotted[-1]:] if dotted else parts
    if not parts:
        return f"{op.lower()}{index}"
    return ".".join(_identifier(p) for p in ".".join(parts).split("."))


def _gemm_weight(b: np.ndarray, attrs: dict) -> np.ndarray:
    """Gemm's B as an aten.linear weight (out, in): alpha folded in, transposed unless transB."""
    w = b if attrs.get("transB", 0) else b.T
    return attrs.get("alpha", 1.0) * w


# --- operator handlers: fn(attrs, *inputs) with torch tensors (numpy for `static` positions) ---------------------


@dataclass
class _Op:
    fn: Callable
    static: frozenset[int] = frozenset()  # inputs used as Python values (shapes, axes, bounds)
    weights: dict[int, str] = field(default_factory=dict)  # constant inputs that are the layer's parameters


def _pads(attrs: dict, x, kernel, strides, dilations) -> tuple[list[int], list[int]]:
    """ONNX pads (or auto_pad) as begin/end per spatial dim, for the static input shape."""
    auto = attrs.get("auto_pad", "NOTSET")
    spatial = list(x.shape[2:])
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begin.append(large if auto == "SAME_LOWER" else small)
            end.append(small if auto == "SAME_LOWER" else large)
        return begin, end
    if auto == "VALID":
        return [0] * len(spatial), [0] * len(spatial)
    pads = list(attrs.get("pads", [0] * 2 * len(spatial)))
    return pads[: len(spatial)], pads[len(spatial):]


def _window(attrs: dict, x, kernel=None):
    kernel = list(kernel if kernel is not None else attrs["kernel_shape"])
    if len(kernel) != 2 or x.dim() != 4:
        raise UserError(f"only 2-D convolution and pooling (NCHW) are supported, got kernel {kernel} on {tuple(x.shape)}")
    strides = list(attrs.get("strides", [1, 1]))
    dilations = list(attrs.get("dilations", [1, 1]))
    begin, end = _pads(attrs, x, kernel, strides, dilations)
    return kernel, strides, dilations, begin, end


def _pad_input(x, begin, end, value: float = 0.0):
    """Asymmetric pads become an explicit F.pad; symmetric ones stay on the op (returns x, padding)."""
    import torch.nn.functional as F

    if begin == end:
        return x, begin
    return F.pad(x, [begin[1], end[1], begin[0], end[0]], value=value), [0, 0]


def _conv(attrs, x, w, b=None):
    import torch.nn.functional as F

    _k, strides, dilations, begin, end = _window(attrs, x, w.shape[2:])
    x, padding = _pad_input(x, begin, end)
    return F.conv2d(x, w, b, strides, padding, dilations, attrs.get("group", 1))


def _max_pool(attrs, x):
    import torch.nn.functional as F

    kernel, strides, dilations, begin, end = _window(attrs, x)
    x, padding = _pad_input(x, begin, end, float("-inf"))
    return F.max_pool2d(x, kernel, strides, padding, dilations, ceil_mode=bool(attrs.get("ceil_mode", 0)))


def _avg_pool(attrs, x):
    import torch.nn.functional as F

    kernel, strides, dilations, begin, end = _window(attrs, x)
    if begin != end or dilations != [1, 1]:
        raise UserError("AveragePool with asymmetric pads or dilations is not supported")
    return F.avg_pool2d(x, kernel, strides, begin, ceil_mode=bool(attrs.get("ceil_mode", 0)),
                        count_include_pad=bool(attrs.get("count_include_pad", 0)))


def _gemm(attrs, a, b, c=None):
    """Constant B arrives as an (out, in) linear weight and constant C as beta*C (see _Builder._param)."""
    import torch
    import torch.nn.functional as F

    if attrs.get("transA", 0):
        a = a.t()
    if 1 not in attrs["_const"]:  # runtime B: the plain formula
        out = attrs.get("alpha", 1.0) * (a @ (b.t() if attrs.get("transB", 0) else b))
    else:
        out = F.linear(a, b, c if 2 in attrs["_const"] and c.dim() == 1 else None)
        if c is None or (2 in attrs["_const"] and c.dim() == 1):
            return out
    return out + (c if 2 in attrs["_const"] else attrs.get("beta", 1.0) * c)


def _matmul(attrs, a, b):
    import torch
    import torch.nn.functional as F

    if 1 in attrs["_const"] and b.dim() == 2:  # constant B arrives transposed: a linear layer
        return F.linear(a, b)
    return torch.matmul(a, b)


def _batch_norm(attrs, x, scale, bias, mean, var):
    import torch.nn.functional as F

    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=attrs.get("epsilon", 1e-5))


def _reshape(attrs, x, shape):
    shape = [int(d) for d in np.asarray(shape).reshape(-1)]
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def _flatten(attrs, x):
    axis = attrs.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


def _softmax(attrs, x):
    import torch

    axis = attrs.get("axis", -1 if attrs["_opset"] >= 13 else 1)
    if attrs["_opset"] >= 13:
        return torch.softmax(x, axis)
    axis %= x.dim()  # before opset 13: softmax over the flattened trailing dims
    return torch.softmax(x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1), 1).reshape(x.shape)


def _clip(attrs, x, low=None, high=None):
    import torch

    low = None if low is None else float(np.asarray(low))
    high = None if high is None else float(np.asarray(high))
    return torch.clamp(x, low, high)


def _axes(attrs, axes):
    if axes is None:
        axes = attrs.get("axes")
    return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]


def _unsqueeze(attrs, x, axes=None):
    axes = _axes(attrs, axes)
    for a in sorted(a % (x.dim() + len(axes)) for a in axes):
        x = x.unsqueeze(a)
    return x


def _squeeze(attrs, x, axes=None):
    axes = _axes(attrs, axes)
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    return x.squeeze(tuple(a % x.dim() for a in axes)) if axes else x


def _gather(attrs, x, indices):
    import torch

    axis = attrs.get("axis", 0) % x.dim()
    idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(*x.shape[:axis], *idx.shape, *x.shape[axis + 1:])


def _concat(attrs, *xs):
    import torch

    return torch.cat(xs, attrs["axis"])


def _constant(attrs):
    import torch

    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in attrs:
            value = np.asarray(attrs[key])
            if key.startswith("value_float"):
                value = value.astype(np.float32)
            if key.startswith("value_int"):
                value = value.astype(np.int64)
            return torch.from_numpy(np.array(value))
    raise UserError(f"Constant node with attributes {sorted(k for k in attrs if not k.startswith('_'))} is not supported")


def _quant_params(x, scale, zero_point, attrs):
    import torch

    axis = attrs.get("axis", 1)
    scale = torch.as_tensor(np.asarray(scale), dtype=torch.float32)
    zp = torch.zeros_like(scale) if zero_point is None else torch.as_tensor(np.asarray(zero_point)).float()
    if scale.dim() == 1 and scale.numel() > 1:  # per-axis
        shape = [1] * x.dim()
        shape[axis % x.dim()] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return scale, zp


def _dequantize(attrs, x, scale, zero_point=None):
    """On constants (weights): integer codes -> float, folded. On activations: the float passes through."""
    if x.is_floating_point():
        return x
    scale, zp = _quant_params(x, scale, zero_point, attrs)
    return (x.float() - zp) * scale


def _quantize(attrs, x, scale, zero_point=None):
    """On constants (weights stored as float + QuantizeLinear): float -> integer codes, folded. On activations:
    identity, since tvmquant quantizes activations itself (the model's note says so)."""
    import torch

    if 0 not in attrs["_const"]:
        return x
    s, zp = _quant_params(x, scale, zero_point, attrs)
    dtype = torch.as_tensor(np.asarray(zero_point)).dtype if zero_point is not None else torch.uint8
    info = torch.iinfo(dtype)
    return torch.clamp(torch.round(x / s) + zp, info.min, info.max).to(dtype)


def _binary(name: str) -> _Op:
    import operator

    fn = {"Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Div": operator.truediv}[name]
    return _Op(lambda attrs, a, b: fn(a, b))


def _unary(fn_name: str) -> _Op:
    def fn(attrs, x):
        import torch

        return getattr(torch, fn_name)(x)

    return _Op(fn)


_OPS: dict[str, _Op] = {
    "Conv": _Op(_conv, weights={1: "weight", 2: "bias"}),
    "Gemm": _Op(_gemm, weights={1: "weight", 2: "bias"}),
    "MatMul": _Op(_matmul, weights={1: "weight"}),
    "BatchNormalization": _Op(_batch_norm, weights={1: "weight", 2: "bias", 3: "running_mean", 4: "running_var"}),
    "Add": _binary("Add"), "Sub": _binary("Sub"), "Mul": _binary("Mul"), "Div": _binary("Div"),
    "Relu": _unary("relu"), "Sigmoid": _unary("sigmoid"), "Tanh": _unary("tanh"),
    "Clip": _Op(_clip, static=frozenset({1, 2})),
    "MaxPool": _Op(_max_pool),
    "AveragePool": _Op(_avg_pool),
    "GlobalAveragePool": _Op(lambda attrs, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)),
    "Flatten": _Op(_flatten),
    "Reshape": _Op(_reshape, static=frozenset({1})),
    "Transpose": _Op(lambda attrs, x: x.permute(*attrs.get("perm", range(x.dim() - 1, -1, -1)))),
    "Concat": _Op(_concat),
    "Softmax": _Op(_softmax),
    "Identity": _Op(lambda attrs, x: x),
    "Dropout": _Op(lambda attrs, x, *_: x, static=frozenset({1, 2})),
    "Constant": _Op(_constant),
    "Shape": _Op(lambda attrs, x: x),  # always folded by the builder: the input shape is static
    "Gather": _Op(_gather, static=frozenset({1})),
    "Unsqueeze": _Op(_unsqueeze, static=frozenset({1})),
    "Squeeze": _Op(_squeeze, static=frozenset({1})),
    "QuantizeLinear": _Op(_quantize, static=frozenset({1, 2})),
    "DequantizeLinear": _Op(_dequantize, static=frozenset({1, 2})),
}
