"""The benchmarked variants behind one interface: `setup(case, ctx) -> Prepared` (a callable that runs one
inference on a fixed input, its output already checked, its weight bytes, and a deployable artifact for the
peak-memory pass). A variant that cannot run here raises `Unavailable` with a one-line reason.

Ours are built through tvmquant's one pipeline (tvmquant.pipeline: quantize -> build), so
whichever kernel family tvmquant picks for a weight kind at run time is what gets measured and reported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import tvm
from tvm import relax
from tqdm import tqdm

import bench_ceilings
from bench_cases import Case
from tvmquant import pipeline
from tvmquant.adapters import for_target
from tvmquant.database import locked, open_database, read_database
from tvmquant.pipeline import BuildOptions, Quantized, QuantRequest, TuningRecords
from tvmquant.quantize import QuantConfig
from tvmquant.reference import ReferenceModel
from tvmquant.scheme import QuantScheme
from tvmquant.source import ModelSource, load_source
from tvmquant.target import TargetSpec

TUNING_CACHE = Path.home() / ".cache" / "tvmquant" / "bench_tuning"
OURS_TOLERANCE = 1e-5  # relative to max |reference|: the integer paths must agree to float32 rounding
PEER_TOLERANCE = {"fp32": 1e-4, "int8": 0.1, "int4": 0.25}  # relative L2 error vs PyTorch fp32


class Unavailable(Exception):
    """The variant cannot run here (a package is missing, the layer kind has no such op); one-line reason."""


class CheckFailed(Exception):
    """The variant's output disagrees with its reference: a bug, never timed."""


@dataclass
class Context:
    """What every variant of one case shares: the input, calibration data, fp32 reference, target, options."""

    case: Case
    x: np.ndarray  # the timed input, batch = the case's batch
    calib: np.ndarray
    fp32_out: np.ndarray
    target: TargetSpec
    trials: int
    e2e_trials: int
    tuning_log: Path | None
    workdir: Path
    progress: bool = True
    _source: ModelSource | None = field(default=None, repr=False)

    @property
    def source(self) -> ModelSource:
        """The case as tvmquant sees it (BatchNorm folded), built once and shared by our variants."""
        if self._source is None:
            self._source = load_source(self.case.module(), self.case.input_shape, self.calib, self.x)
        return self._source


@dataclass
class Prepared:
    run: Callable[[], object]
    weight_bytes: int
    family: str
    check: str  # what the output was checked against, and the error
    artifact: tuple[str, Path]  # (loader kind, path) for the peak-memory pass
    note: str = ""
    work: dict | None = None  # ours on models: the kernels' least work (bench_ceilings.kernel_work)


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    group: str  # "peer" or "ours"
    setup: Callable[[Context], Prepared]


def relative_l2(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


def check_peer(out: np.ndarray, ctx: Context, precision: str) -> str:
    """Peers are checked against PyTorch fp32 with a tolerance loose enough for their precision."""
    err = relative_l2(np.asarray(out, np.float32).reshape(ctx.fp32_out.shape), ctx.fp32_out)
    if not err <= PEER_TOLERANCE[precision]:
        raise CheckFailed(f"relative L2 error {err:.3g} vs PyTorch fp32 exceeds {PEER_TOLERANCE[precision]}")
    return f"vs torch fp32: rel. L2 {err:.1e}"


def check_ours(out: np.ndarray, ref: np.ndarray) -> str:
    """Ours must match the quantized PyTorch reference of the same scheme (tvmquant.reference)."""
    err = float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))
    if not err <= OURS_TOLERANCE:
        raise CheckFailed(f"max |out - reference| / max |reference| = {err:.3g} exceeds {OURS_TOLERANCE}")
    return f"vs quantized reference: max rel. {err:.1e}"


# ---------------------------------------------------------------- PyTorch


def torch_fp32(ctx: Context) -> Prepared:
    module = ctx.case.module()
    x = torch.from_numpy(ctx.x)
    path = ctx.workdir / f"{ctx.case.name}-torch_fp32.pt"
    torch.save(module, path)
    nbytes = sum(p.numel() * p.element_size() for p in module.parameters())
    return Prepared(_no_grad(module, x), nbytes, "fp32", "is the reference", ("torch", path))


def torch_int8(ctx: Context) -> Prepared:
    """fbgemm int8: static (calibrated activations) for convs and models, dynamic for linear layers."""
    import torch.ao.quantization as tq

    if "fbgemm" not in torch.backends.quantized.supported_engines:
        raise Unavailable("torch has no fbgemm quantized engine")
    torch.backends.quantized.engine = "fbgemm"
    module = ctx.case.module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if ctx.case.kind == "linear":
            # wrapped: quantize_dynamic swaps children only, never the module it is given
            quantized = tq.quantize_dynamic(torch.nn.Sequential(module), {torch.nn.Linear}, dtype=torch.qint8)
            how = "dynamic"
        else:
            quantized, how = _torch_static_int8(module, ctx), "static"
    x = torch.from_numpy(ctx.x)
    run = _no_grad(quantized, x)
    check = check_peer(run().numpy(), ctx, "int8")
    path = ctx.workdir / f"{ctx.case.name}-torch_int8.pt"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(quantized, (x,)), str(path))  # quantized modules do not unpickle
    return Prepared(run, _torch_quantized_bytes(quantized), f"fbgemm int8 ({how})", check, ("torchscript", path))


def _torch_static_int8(module: torch.nn.Module, ctx: Context) -> torch.nn.Module:
    """Eager mode (FX mode's convert in torch 2.13 leaves the reference float ops in place, no fbgemm kernels):
    conv+bn(+relu) fused as the case lists them, quant/dequant stubs around the whole, calibrated."""
    import torch.ao.quantization as tq

    for group in ctx.case.int8_fusion:
        tq.fuse_modules(module, list(group), inplace=True)
    wrapped = tq.QuantWrapper(module).eval()
    wrapped.qconfig = tq.get_default_qconfig("fbgemm")
    prepared = tq.prepare(wrapped)
    with torch.no_grad():
        for batch in _batches(ctx.calib, ctx.x.shape[0]):
            prepared(torch.from_numpy(batch))
    return tq.convert(prepared)


def _torch_quantized_bytes(module: torch.nn.Module) -> int:
    """int8 weights + float32 per-channel scales + float32 biases, read from the quantized modules' weights."""
    total = 0
    for m in module.modules():
        weight = getattr(m, "weight", None)
        if callable(weight):
            w, bias = m.weight(), m.bias() if callable(getattr(m, "bias", None)) else None
            total += w.numel() + 4 * w.shape[0] + (4 * bias.numel() if bias is not None else 0)
        elif isinstance(weight, torch.Tensor):  # a layer left in float
            total += sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
    return total


def _no_grad(module: torch.nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run


def _batches(data: np.ndarray, size: int):
    for start in range(0, len(data) - size + 1, size):
        yield data[start : start + size]


# ---------------------------------------------------------------- ONNX Runtime


def _ort():
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        raise Unavailable("not installed (pip install onnxruntime onnx)")
    import onnxruntime

    return onnxruntime


def _onnx_fp32(ctx: Context) -> Path:
    """The case exported by torch's TorchScript-based ONNX exporter (the dynamo one needs onnxscript)."""
    path = ctx.workdir / f"{ctx.case.name}-fp32.onnx"
    if not path.exists():
        buf = io.BytesIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(ctx.case.module(), (torch.from_numpy(ctx.x),), buf, dynamo=False,
                              input_names=["x"], output_names=["y"], opset_version=17)
        path.write_bytes(buf.getvalue())
    return path


def _ort_session(path: Path, threads: int):
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if os.environ.get("TVMQUANT_BENCH_ORT_NO_SPIN"):  # bench.py: every library's pool waits passively
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_prepared(path: Path, ctx: Context, precision: str, family: str) -> Prepared:
    import onnx
    from onnx import numpy_helper

    session = _ort_session(path, torch.get_num_threads())
    feed = {"x": ctx.x}
    run = lambda: session.run(None, feed)  # noqa: E731
    check = check_peer(run()[0], ctx, precision)
    graph = onnx.load(str(path)).graph
    nbytes = sum(numpy_helper.to_array(init).nbytes for init in graph.initializer)
    return Prepared(run, nbytes, family, check, ("onnx", path))


class _Calibration:
    """onnxruntime.quantization's CalibrationDataReader protocol over our calibration batches."""

    def __init__(self, data: np.ndarray, batch: int):
        self.batches = iter(list(_batches(data, batch)))

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {"x": batch}


def ort_int8(ctx: Context) -> Prepared:
    """Static QDQ (per-channel int8 weights, uint8 activations, calibrated) for convs and models; dynamic
    (MatMulInteger) for linear layers."""
    _ort()
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    fp32, path = _onnx_fp32(ctx), ctx.workdir / f"{ctx.case.name}-int8.onnx"
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if ctx.case.kind == "linear":
            quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)
            family = "int8 dynamic (MatMulInteger)"
        else:
            quantize_static(str(fp32), str(path), _Calibration(ctx.calib, ctx.x.shape[0]),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            family = "int8 static (QDQ)"
    return _ort_prepared(path, ctx, "int8", family)


def ort_int4(ctx: Context) -> Prepared:
    """com.microsoft MatMulNBits: 4-bit weights in blocks of 32 along K (symmetric, zero point 8, one float32
    scale per block), activations quantized to int8 inside the op (accuracy_level 4, its fast path)."""
    if ctx.case.kind != "linear":
        raise Unavailable("MatMulNBits is a MatMul op; ORT has no 4-bit conv")
    _ort()
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(_onnx_fp32(ctx)))
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    (node,) = [n for n in graph.node if n.op_type == "MatMul"]
    weight = numpy_helper.to_array(inits[node.input[1]])  # (K, N)
    packed, scales = pack_int4_blocks(weight, 32)
    k, n = weight.shape
    new = helper.make_node(
        "MatMulNBits", [node.input[0], "w_int4", "w_scales"], list(node.output), domain="com.microsoft",
        K=k, N=n, bits=4, block_size=32, accuracy_level=4,
    )
    graph.initializer.remove(inits[node.input[1]])
    graph.initializer.extend([numpy_helper.from_array(packed, "w_int4"), numpy_helper.from_array(scales, "w_scales")])
    graph.node.remove(node)
    graph.node.append(new)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    path = ctx.workdir / f"{ctx.case.name}-int4.onnx"
    onnx.save(model, str(path))
    return _ort_prepared(path, ctx, "int4", "MatMulNBits 4-bit, block 32")


def pack_int4_blocks(weight: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) float weight -> MatMulNBits' B (N, K/block, block/2) uint8, two codes a byte (low nibble first),
    and scales (N * K/block,) float32; code = round(w / scale) + 8 with scale = max|w| / 7 per block."""
    k, n = weight.shape
    blocks = weight.T.reshape(n, k // block, block)
    scales = np.abs(blocks).max(axis=2) / 7
    scales[scales == 0] = 1
    codes = np.clip(np.rint(blocks / scales[..., None]) + 8, 0, 15).astype(np.uint8)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return np.ascontiguousarray(packed), scales.reshape(-1).astype(np.float32)


# ---------------------------------------------------------------- TVM


def constant_bytes(mod: tvm.IRModule) -> int:
    """Bytes of every relax.Constant in the module: the weights the compiled artifact carries."""
    total = 0

    @relax.expr_functor.visitor
    class Visitor(relax.PyExprVisitor):
        def visit_generic_const_(self, const) -> None:
            nonlocal total
            total += const.value.numpy().nbytes

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            Visitor().visit_expr(func)
    return total


def _vm_prepared(executable, ctx: Context, key: str, weight_bytes: int, family: str, check_fn) -> Prepared:
    vm = relax.VirtualMachine(executable, for_target(ctx.target).device(None))
    arg = tvm.runtime.tensor(ctx.x)
    run = lambda: vm["main"](arg)  # noqa: E731
    check = check_fn(run().numpy())
    path = ctx.workdir / f"{ctx.case.name}-{key}.so"
    executable.export_library(str(path))
    return Prepared(run, weight_bytes, family, check, ("tvm", path))


def tvm_fp32(ctx: Context) -> Prepared:
    """TVM's default Relax pipeline on the fp32 layer, with MetaSchedule records (XGBoost cost model) when
    --trials > 0; the records are cached, so a re-run with the same trials does not tune again."""
    src = ctx.source
    unquantized = Quantized(QuantScheme(), src.gm)
    nbytes = constant_bytes(pipeline.relax_module(src, unquantized, ctx.target))
    trials = ctx.e2e_trials if ctx.case.kind == "model" else ctx.trials
    records = tune_fp32(unquantized, src, ctx, trials) if trials > 0 else None
    built = pipeline.build(src, unquantized, ctx.target, BuildOptions(records=records))
    family = f"fp32 MetaSchedule {trials} trials" if trials > 0 else "fp32 untuned"
    if records is not None:
        family += f", {len(built.tuned)} funcs from records"
    return _vm_prepared(built.executable, ctx, "tvm_fp32", nbytes, family, lambda out: check_peer(out, ctx, "fp32"))


def tuning_dir(ctx: Context) -> Path:
    return TUNING_CACHE / f"{ctx.target.tvm_target.mcpu}" / ctx.case.name


def tune_fp32(unquantized: Quantized, src: ModelSource, ctx: Context, trials: int) -> TuningRecords:
    """MetaSchedule over the fp32 model's fused tasks. Single layers: `trials` per task. Models: a global budget
    of `trials` spread by TVM's gradient task scheduler (at most 64 per task, each gets its first round).
    Done once per budget: a marker
    file in the cache folder records it."""
    from tvmquant import tune as tq
    from tvm.s_tir import meta_schedule as ms

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)  # its per-round task tables
    log_dir = tuning_dir(ctx)
    marker = log_dir / "bench_trials.json"
    tvm_target = ctx.target.tvm_target
    with locked(log_dir):
        done = json.loads(marker.read_text()).get("trials", 0) if marker.is_file() else 0
        if done < trials:
            tasks = ms.relax_integration.extract_tasks(pipeline.tuning_module(src, unquantized, ctx.target), tvm_target)
            per_task = min(trials, 64) if ctx.case.kind == "model" else trials
            total = trials if ctx.case.kind == "model" else trials * len(tasks)
            per_iter = max(1, min(16, total // len(tasks)))  # so that a thin model budget still reaches every task
            database = open_database(log_dir)
            with tempfile.TemporaryDirectory(prefix="bench-tune-") as work_dir, tqdm(
                total=total, unit="trial", desc=f"tuning TVM fp32 {ctx.case.name} ({len(tasks)} tasks)",
                disable=not ctx.progress, leave=False,
            ) as bar, tq._without_tensor_intrin():
                # TVM's generic LLVM rules: the x86 default adds VNNI (int8) tiling, no use for fp32, and needs the
                # tensor-intrinsic registry whose import stalls every builder worker (see tvmquant.tune)
                space = ms.space_generator.PostOrderApply(sch_rules="llvm", postprocs="llvm", mutator_probs="llvm")
                contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(tasks, work_dir, space=space)
                ms.tune.tune_tasks(
                    tasks=contexts, task_weights=weights, work_dir=work_dir, max_trials_global=total,
                    max_trials_per_task=per_task, num_trials_per_iter=per_iter,
                    builder=for_target(ctx.target).builder(ctx.target, 60.0), runner=tq.make_runner(None, 60.0, 1),
                    database=database, cost_model=ms.cost_model.XGBModel(num_warmup_samples=per_iter, verbose_eval=0),
                    measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), tq._Progress(bar)],
                    task_scheduler="gradient",
                )
            marker.write_text(json.dumps({"trials": trials}))
    return TuningRecords([log_dir], read_database(log_dir), {})


@dataclass(frozen=True)
class Ours:
    """One of our configurations: a tvmquant method and bit widths."""

    method: str
    wbits: int
    abits: int
    kernel: str = "auto"  # --kernel: auto (the registry's cost rule) or one family wherever it runs
    codes: bool = True  # codes between layers (off: --no-codes-between-layers)

    @property
    def key(self) -> str:
        suffix = ("" if self.kernel == "auto" else f"_{self.kernel}") + ("" if self.codes else "_nocodes")
        return f"ours_{self.method}_w{self.wbits}a{self.abits}{suffix}"

    @property
    def label(self) -> str:
        suffix = ("" if self.kernel == "auto" else f" --kernel {self.kernel}") + (
            "" if self.codes else " --no-codes-between-layers")
        return f"{self.method} W{self.wbits}A{self.abits}{suffix}"

    def config(self, case: Case) -> QuantConfig:
        """Models keep first and last layers at 8 bits; a single layer gets exactly the asked bits (its
        first/last bits equal to min(wbits, abits) leave the plan untouched)."""
        edges = 8 if case.kind == "model" else min(self.wbits, self.abits)
        return QuantConfig(self.wbits, self.abits, first_last_bits=edges, method=self.method)

    def setup(self, ctx: Context) -> Prepared:
        src, config = ctx.source, self.config(ctx.case)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = pipeline.quantize(src, QuantRequest(config))
        scheme = quantized.scheme
        # codes off: the kernels then read float NCHW, whose shape kernel_work reads (constants are the same)
        lowered = pipeline.relax_module(src, quantized, ctx.target, self.kernel, codes=False)
        nbytes = constant_bytes(lowered)
        records = TuningRecords.read(ctx.tuning_log) if ctx.tuning_log is not None else None
        built = pipeline.build(src, quantized, ctx.target, BuildOptions(self.kernel, records, self.codes))
        reference = ReferenceModel(src.gm, src.layers, scheme)(ctx.x)
        families = sorted(set(built.lowered.kernels.values())) or ["float32 (nothing quantized)"]
        family = "+".join(families) if ctx.case.kind == "model" else families[0]
        if ctx.case.kind == "model":
            edge = "first/last W8A8, " if len(scheme.layers) > 2 else ""
            family = f"{family} ({edge}{len(scheme.layers)} layers)"
        prepared = _vm_prepared(built.executable, ctx, self.key, nbytes, family, lambda out: check_ours(out, reference))
        prepared.note = f"{len(built.tuned)} kernels from records" if records is not None else ""
        if ctx.case.kind == "model":
            prepared.work = bench_ceilings.kernel_work(lowered, scheme)
        return prepared


PEERS = [
    Variant("torch_fp32", "PyTorch fp32", "peer", torch_fp32),
    Variant("tvm_fp32", "TVM fp32", "peer", tvm_fp32),
    Variant("torch_int8", "PyTorch int8", "peer", torch_int8),
    Variant("ort_int8", "ORT int8", "peer", ort_int8),
    Variant("ort_int4", "ORT 4-bit", "peer", ort_int4),
]


def our_variants(case: Case, quick: bool) -> list[Variant]:
    """Bit-serial W1A1/W2A2/W4A4 everywhere; POW2 (inq), CODEBOOK (uniq) and MULTIPOINT at 2 bits, so whatever
    kernel tvmquant has for those kinds is measured (MULTIPOINT on convs only); W2A8 on linear layers (the
    LUT-GEMV goal). Models: W2A2."""
    if quick:
        configs = [Ours("uniform", 2, 2), Ours("uniq", 2, 2)]
    elif case.kind == "model":  # auto (int8 for the 8-bit edges and few-channel layers) vs bit-serial only
        configs = [Ours("uniform", 2, 2), Ours("uniform", 2, 2, codes=False), Ours("uniform", 1, 1),
                   Ours("uniform", 2, 2, "bitserial")]
    else:
        configs = [Ours("uniform", 1, 1), Ours("uniform", 2, 2), Ours("uniform", 4, 4), Ours("uniform", 8, 8),
                   Ours("uniform", 2, 2, "int8"), Ours("inq", 2, 2), Ours("inq", 2, 2, "shift"), Ours("uniq", 2, 2),
                   Ours("uniq", 2, 2, "lut"), Ours("uniq", 2, 2, "onehot")]
        if case.kind == "conv":  # multipoint's PTQ of a 1024- or 4096-wide linear layer takes many minutes here
            configs.append(Ours("multipoint", 2, 2))
        else:
            configs += [Ours("uniform", 2, 8), Ours("uniq", 2, 8)]
    return [Variant(c.key, c.label, "ours", c.setup) for c in configs]
