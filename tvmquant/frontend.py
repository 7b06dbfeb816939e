"""PyTorch in: a module or a torch.export archive becomes a BatchNorm-folded ExportedProgram, its list of
quantizable layers, and a Relax IRModule whose parameters keep their PyTorch names.

Layers are identified by the fully qualified name of their weight's owner ("conv1", "features.3"), which both
sides see: the FX graph as `get_attr` targets and Relax as parameter names via the graph signature.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx

from . import safe_load
from .errors import UserError

_CONV = torch.ops.aten.conv2d.default
_LINEAR = torch.ops.aten.linear.default
_BATCH_NORM = torch.ops.aten.batch_norm.default


@dataclass
class LayerInfo:
    """A conv2d or linear call with a parameter weight; `unsupported` says why it stays float, if it does."""

    name: str
    op: str
    weight: str
    node: str
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    unsupported: str | None = None


def load_exported(path: str | Path, trust: bool = False) -> torch.export.ExportedProgram:
    """Load a `.pt2` written by torch.export.save, with errors a user can act on; untrusted (the default)
    archives are checked first so that they cannot run code (see `safe_load`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a torch.export archive (.pt2 written by torch.export.save)")
    try:
        return safe_load.load_exported(path, trust)
    except UserError:
        raise
    except Exception as exc:  # torch raises many types for foreign or damaged archives
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{path} is not a readable torch.export archive: {type(exc).__name__}: {first}") from exc


def export_module(module: torch.nn.Module, input_shape: tuple[int, ...]) -> torch.export.ExportedProgram:
    """torch.export a module for one float32 input of a fixed shape."""
    try:
        with safe_load.quiet_loggers("torch._subclasses.fake_tensor"):
            return torch.export.export(module.eval(), (torch.zeros(input_shape),))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"torch.export failed for input shape {tuple(input_shape)}: {first}") from exc


def input_shape_of(ep: torch.export.ExportedProgram, override: tuple[int, ...] | None) -> tuple[int, ...]:
    """The single user input's static shape, from the archive or from `override` (--input-shape)."""
    user_inputs = ep.graph_signature.user_inputs
    if len(user_inputs) != 1:
        raise UserError(f"only single-input models are supported; this one takes {len(user_inputs)} inputs")
    if override is not None:
        return tuple(override)
    node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == user_inputs[0])
    shape = tuple(node.meta["val"].shape)
    if not all(isinstance(d, int) for d in shape):
        raise UserError(f"the model's input shape {shape} is dynamic; pass --input-shape, e.g. 1,3,224,224")
    return shape


def fold_batchnorm(gm: fx.GraphModule) -> list[str]:
    """Fold eval-mode batch_norm into the conv2d that feeds it (weights and bias rewritten in place).

    Preconditions: the conv's output has no other user and its weight is a parameter (`get_attr`).
    Returns the names of the convolutions that absorbed a BatchNorm.
    """
    folded = []
    for bn in list(gm.graph.nodes):
        if bn.op != "call_function" or bn.target is not _BATCH_NORM:
            continue
        conv, gamma, beta, mean, var, training, _momentum, eps = bn.args[:8]
        if training or conv.op != "call_function" or conv.target is not _CONV or len(conv.users) != 1:
            continue
        if conv.args[1].op != "get_attr" or any(a is None for a in (mean, var)):
            continue
        weight_name = conv.args[1].target
        owner = weight_name.rpartition(".")[0]
        with torch.no_grad():
            factor = _get(gm, var.target).add(eps).rsqrt()
            if gamma is not None:
                factor = factor * _get(gm, gamma.target)
            bias_node = conv.args[2] if len(conv.args) > 2 else None
            bias = _get(gm, bias_node.target) if bias_node is not None else torch.zeros_like(factor)
            new_bias = (bias - _get(gm, mean.target)) * factor
            if beta is not None:
                new_bias = new_bias + _get(gm, beta.target)
            weight = _get(gm, weight_name)
            _set(gm, weight_name, weight * factor.reshape(-1, *([1] * (weight.dim() - 1))))
            bias_name = bias_node.target if bias_node is not None else _fresh_name(gm, owner, "bias")
            _set(gm, bias_name, new_bias)
        if bias_node is None:
            with gm.graph.inserting_before(conv):
                bias_node = gm.graph.get_attr(bias_name)
        args = list(conv.args) + [None] * (3 - len(conv.args))
        args[2] = bias_node
        conv.args = tuple(args)
        bn.replace_all_uses_with(conv)
        gm.graph.erase_node(bn)
        folded.append(owner or weight_name)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return folded


def _get(gm: fx.GraphModule, name: str) -> torch.Tensor:
    owner, _, attr = name.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, attr)


def _set(gm: fx.GraphModule, name: str, value: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    module = gm.get_submodule(owner) if owner else gm
    if hasattr(module, attr):
        delattr(module, attr)
    module.register_parameter(attr, torch.nn.Parameter(value.detach().clone(), requires_grad=False))


def _fresh_name(gm: fx.GraphModule, owner: str, attr: str) -> str:
    base = f"{owner}.{attr}" if owner else attr
    name, i = base, 0
    while True:
        try:
            _get(gm, name)
        except AttributeError:
            return name
        i += 1
        name = f"{base}_{i}"


def find_layers(gm: fx.GraphModule) -> list[LayerInfo]:
    """Every conv2d / linear call whose weight is a parameter, in graph order."""
    layers = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in (_CONV, _LINEAR):
            continue
        weight = node.args[1]
        if weight.op != "get_attr":
            continue
        name = weight.target[: -len(".weight")] if weight.target.endswith(".weight") else weight.target
        if node.target is _LINEAR:
            layers.append(LayerInfo(name, "linear", weight.target, node.name))
            continue
        stride, padding, dilation, groups = _conv_geometry(node)
        info = LayerInfo(name, "conv2d", weight.target, node.name, stride, padding)
        if groups != 1:
            info.unsupported = f"grouped convolution (groups={groups})"
        elif dilation != (1, 1):
            info.unsupported = f"dilated convolution (dilation={dilation})"
        layers.append(info)
    return layers


def _conv_geometry(node: fx.Node) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], int]:
    defaults = (None, None, None, [1, 1], [0, 0], [1, 1], 1)
    args = list(node.args) + list(defaults[len(node.args):])
    for key, index in (("stride", 3), ("padding", 4), ("dilation", 5), ("groups", 6)):
        if key in node.kwargs:
            args[index] = node.kwargs[key]

    def pair(v) -> tuple[int, int]:
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        return (int(v[0]), int(v[-1]))

    return pair(args[3]), pair(args[4]), pair(args[5]), int(args[6])


def prepare(ep: torch.export.ExportedProgram, input_shape: tuple[int, ...]) -> tuple[fx.GraphModule, list[str]]:
    """Unlift the program into a runnable GraphModule with BatchNorm folded; returns it and the folded convs."""
    gm = ep.module()
    folded = fold_batchnorm(gm)
    gm(torch.zeros(input_shape))  # fail early, with the user's shape, if the graph cannot run
    return gm, folded


def to_relax(gm: fx.GraphModule, input_shape: tuple[int, ...]):
    """Re-export the folded graph and import it into Relax.

    Returns (IRModule with parameters as function inputs, {relax param name: numpy value},
    {relax param name: PyTorch FQN}).
    """
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    ep = torch.export.export(gm, (torch.zeros(input_shape),))
    try:
        mod = from_exported_program(ep, keep_params_as_input=True, unwrap_unit_return_tuple=True)
    except Exception as exc:
        raise UserError(f"TVM cannot import this model: {_unsupported_op(exc)}") from exc
    mod, params = relax.frontend.detach_params(mod)
    names = [p.name for p in mod["main"].params[1:]]
    values = {name: value.numpy() for name, value in zip(names, params.get("main", []))}
    fqn = dict(ep.graph_signature.inputs_to_parameters) | dict(ep.graph_signature.inputs_to_buffers)
    return mod, values, {n: fqn.get(n, n) for n in names}


def _unsupported_op(exc: Exception) -> str:
    text = str(exc)
    marker = "Unsupported function types"
    if marker in text:
        return "unsupported operator(s) " + text[text.index(marker) + len(marker):].strip(" :")
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
