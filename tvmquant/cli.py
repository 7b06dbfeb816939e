"""`tvmquant` / `python -m tvmquant`: compile a PyTorch model to a low-bit TVM module, run it on a device."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from . import cli_eval_bench, plan_cli
from .errors import UserError
from .json_output import HELP as JSON_HELP
from .names import KERNELS, METHODS, QAT_METHODS

EPILOG = """examples:
  python -m tvmquant compile --target arm_cpu --bits 2        built-in digits CNN, W2A2, for 64-bit ARM
  python -m tvmquant compile --model net.pt2 --calib x.npy --wbits 2 --abits 4 -o net.so
  python -m tvmquant run --target arm_cpu --rpc 127.0.0.1:9091 tvmquant_out/digits_cnn-arm_cpu-w2a2-uniform.so
  python -m tvmquant tune --target arm_cpu --rpc-tracker 127.0.0.1:9190 --rpc-key arm64 --trials 8
  python -m tvmquant deploy --rpc-tracker 127.0.0.1:9190 --rpc-key arm64 tvmquant_out/digits_cnn-arm_cpu-w2a2-uniform.so
  python -m tvmquant eval --methods uniform,inq --bits 2,4      accuracy against bits, table and plot
  python -m tvmquant bench tvmquant_out/digits_cnn-x86-w2a2-uniform.so  against PyTorch fp32 and ONNX Runtime int8
"""

EXAMPLES = {  # each subcommand's --help ends with these
    "compile": """  python -m tvmquant compile --target arm_cpu --bits 2
  python -m tvmquant compile --model net.onnx --calib x.npy --wbits 2 --abits 4 --method uniq -o net.so
  python -m tvmquant compile --bits 4 --report report.html --json > compile.json
""" + plan_cli.HELP_EPILOG,
    "tune": """  python -m tvmquant tune --target x86 --trials 16
  python -m tvmquant tune --target arm_cpu --rpc-tracker 127.0.0.1:9190 --rpc-key arm64 --trials 8 --json""",
    "deploy": """  python -m tvmquant deploy --rpc-tracker 127.0.0.1:9190 --rpc-key arm64 tvmquant_out/digits_cnn-arm_cpu-w2a2-uniform.so
  python -m tvmquant deploy --rpc 127.0.0.1:9091 tvmquant_out/digits_cnn-arm_cpu-w2a2-uniform.so --json""",
    "run": """  python -m tvmquant run --target x86 tvmquant_out/digits_cnn-x86-w2a2-uniform.so
  python -m tvmquant run --target arm_cpu --rpc 127.0.0.1:9091 tvmquant_out/digits_cnn-arm_cpu-w2a2-uniform.so --json""",
}


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected dims like 1,3,224,224, got '{text}'") from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"dims must be positive, got '{text}'")
    return dims


def _bits(text: str) -> int:
    try:
        bits = int(text)
    except ValueError:
        bits = 0
    if not 1 <= bits <= 8:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to 8, got '{text}'")
    return bits


def _first_last(text: str) -> int | None:
    if text == "fp32":
        return None
    try:
        return _bits(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 1..8 or fp32, got '{text}'") from None


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line and exit code 2, like every other user error."""

    def error(self, message: str):
        raise UserError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; imports nothing heavy, so --help and usage errors are instant."""
    parser = _Parser(
        prog="tvmquant",
        description="Quantize a trained PyTorch model to 1-8 bits and compile it with Apache TVM.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    comp = sub.add_parser(
        "compile",
        help="quantize and compile a model into one shared library",
        description="Quantize a model (default: the built-in digits CNN), compile it for a target, write one "
        "shared library with the weights inside, and report accuracy of fp32 vs quantized reference vs "
        "compiled module. Tuning records (shipped ones and your own tune runs', or --tuning-log) are applied; "
        "compile never tunes.",
    )
    _model_args(comp)
    comp.add_argument("--eval-data", help="evaluation inputs, .npy (default: built-in test digits, else the calibration data)")
    comp.add_argument("--eval-labels", help="integer labels for --eval-data, .npy, to report accuracy")
    comp.add_argument("--tuning-log", type=Path, help="a tune log folder to apply (default: the records shipped for "
                      "TARGET plus your own in ~/.cache/tvmquant/tuning_logs/TARGET/)")
    comp.add_argument("--rpc", help="HOST:PORT of a TVM RPC server to evaluate a non-local target on (default: the target's)")
    comp.add_argument("-o", "--output", type=Path, help="artifact path; its sidecars are OUTPUT.json and OUTPUT.npz beside it "
                      "(default: tvmquant_out/MODEL-TARGET-wWaA-METHOD[-KERNEL].so)")
    comp.add_argument("--report", type=Path, metavar="REPORT.html",
                      help="also write one self-contained HTML page: layers, accuracy, weight histograms, bytes and time per layer")
    comp.add_argument("--eval-limit", type=int, help="vta: check only the first N evaluation samples on the simulator")
    plan_cli.add_arguments(comp)

    tune = sub.add_parser(
        "tune",
        help="autotune the model's kernels with MetaSchedule (XGBoost cost model), on the device over RPC",
        description="Extract the model's tunable tasks (bit-serial kernels and the remaining fp32 ops), tune each "
        "with MetaSchedule and the XGBoost cost model, measuring on the device through an RPC tracker (or here for "
        "x86), and add the records to TVM's JSON database in --log-dir (default ~/.cache/tvmquant/tuning_logs/TARGET/). "
        "A second run resumes.",
    )
    _model_args(tune)
    tune.add_argument("--rpc-tracker", metavar="HOST:PORT", help="RPC tracker the device(s) registered with (needed for non-local targets)")
    tune.add_argument("--rpc-key", metavar="KEY", help="device key at the tracker")
    tune.add_argument("--trials", type=int, default=16, help="measured trials per task, in total over runs (default: 16)")
    tune.add_argument("--log-dir", type=Path, help="database folder to add records to (default: "
                      "~/.cache/tvmquant/tuning_logs/TARGET/, which compile applies by itself)")
    tune.add_argument("--timeout", type=float, default=60.0, help="seconds per build and per measurement before it counts as failed (default: 60)")

    deploy = sub.add_parser(
        "deploy",
        help="upload an artifact to a device via an RPC tracker (or a direct server), check it, time it",
        description="Upload a compiled artifact to a device reached through an RPC tracker (any free server under "
        "the key) or directly, load it, run it on the inputs saved beside it at compile time, compare with the "
        "quantized PyTorch reference and report agreement, accuracy and latency (TVM time evaluator, median of repeats).",
    )
    deploy.add_argument("artifact", type=Path, help="the .so written by tvmquant compile")
    deploy.add_argument("--rpc-tracker", metavar="HOST:PORT", help="RPC tracker the device(s) registered with")
    deploy.add_argument("--rpc-key", metavar="KEY", help="device key at the tracker")
    deploy.add_argument("--rpc", metavar="HOST:PORT", help="a TVM RPC server to use directly, instead of a tracker")
    deploy.add_argument("--repeat", type=int, default=5, help="timing repeats (default: 5)")

    run = sub.add_parser(
        "run",
        help="run a compiled artifact on a device, check it against the reference, time it",
        description="Upload a compiled artifact to a TVM RPC server (or run it here for local targets), run it on "
        "the inputs saved beside it at compile time, compare with the quantized PyTorch reference and report "
        "agreement, accuracy and latency (TVM time evaluator, median of repeats).",
    )
    run.add_argument("artifact", type=Path, help="the .so written by tvmquant compile")
    run.add_argument("--target", required=True, help="the target it was compiled for")
    run.add_argument("--rpc", help="HOST:PORT of the device's TVM RPC server (default: the target's; unused for local targets)")
    run.add_argument("--repeat", type=int, default=5, help="timing repeats (default: 5)")
    run.add_argument("--profile", action="store_true",
                     help="also print the time of every kernel and remaining op, sorted (local targets only)")
    run.add_argument("--eval-limit", type=int, help="vta: run only the first N saved inputs on the simulator")
    for command in (comp, tune, deploy, run):
        command.add_argument("--json", action="store_true", help=JSON_HELP)
    for name, examples in EXAMPLES.items():
        sub.choices[name].epilog = "examples:\n" + examples
        sub.choices[name].formatter_class = argparse.RawDescriptionHelpFormatter
    cli_eval_bench.add_parsers(sub, _first_last, _shape)
    return parser


def _model_args(parser: argparse.ArgumentParser) -> None:
    """What decides the compiled program, shared by compile and tune so that tuning records match."""
    parser.add_argument("--model", help="a torch.export archive (.pt2, from torch.export.save) or an ONNX model (.onnx); "
                        "default: built-in digits CNN")
    cli_eval_bench.add_trust_model(parser)
    parser.add_argument("--input-shape", type=_shape, help="input shape, e.g. 1,3,224,224 (default: from the model)")
    parser.add_argument("--target", default="x86", help="a name in targets/ (x86, arm_cpu) or a target .json file (default: x86)")
    parser.add_argument("--cuda-arch", metavar="sm_XY", help="CUDA targets: the GPU architecture to build for, "
                        "e.g. sm_80 (A100), sm_90 (H100) (default: the target file's, sm_80 for cuda)")
    parser.add_argument("--float16", action="store_true", help="CUDA targets: compute the float32 ops left outside "
                        "the quantized kernels in float16 (inputs and outputs stay float32)")
    parser.add_argument("--bits", type=_bits, default=2, help="weight and activation bits, 1-8 (default: 2)")
    parser.add_argument("--wbits", type=_bits, help="weight bits, overrides --bits")
    parser.add_argument("--abits", type=_bits, help="activation bits, overrides --bits")
    parser.add_argument("--first-last-bits", type=_first_last, default=8, metavar="{1..8,fp32}",
                        help="precision of the first and last layer, which hurt accuracy most (default: 8)")
    parser.add_argument("--method", default="uniform", choices=METHODS, help="quantization method (default: uniform)")
    parser.add_argument("--budget", type=float, default=0.1,
                        help="multipoint: extra weight rows allowed, as a fraction of all output channels (default: 0.1)")
    parser.add_argument("--kernel", default="auto", choices=KERNELS,
                        help="kernel family for the quantized layers: auto picks by weight kind and a cost rule (uniform -> "
                        "int8 for 8-bit and few-channel layers, else bitserial; pow2 -> int8 where the target has a dot "
                        "instruction, else shift; codebook -> onehot (popcount) or lut by a cost rule, multipoint -> "
                        "multipoint; grouped convs -> "
                        "depthwise); a family runs every layer it can, the others keep auto's choice and the summary "
                        "says why (default: auto)")
    parser.add_argument("--no-codes-between-layers", dest="codes", action="store_false",
                        help="every kernel reads float32 NCHW and quantizes, pads and packs it itself (default: the "
                        "bitserial and int8 kernels read codes from an encoder fused with the ops before them)")
    parser.add_argument("--act-scale", default="mse", choices=("mse", "pow2"),
                        help="activation scales: least squared error, or powers of two with signed codes (default: "
                        "mse; --target vta always uses pow2)")
    parser.add_argument("--vta-config", help="vta: a vta_config.json, or a name in targets/ (default, w4, w2, i4w4; "
                        "default: the target's)")
    parser.add_argument("--method-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="a method option, repeatable, e.g. fit=empirical (uniq), approx=mean (balanced), "
                        "levels=uniform (qnet), max_points=2 (multipoint); a wrong one is named with the method's list")
    parser.add_argument("--calib", help="calibration inputs, .npy of shape (N, ...) (default: the built-in model's held-out calibration digits)")
    parser.add_argument("--train", action="store_true",
                        help=f"quantization-aware fine-tuning ({', '.join(QAT_METHODS)}); otherwise post-training")
    parser.add_argument("--epochs", type=int, default=3, help="--train: epochs (default: 3)")
    parser.add_argument("--lr", type=float, default=1e-4, help="--train: Adam learning rate (default: 1e-4)")
    parser.add_argument("--train-data", help="--train: .npz with arrays x (N, ...) and y (N,) labels (default: built-in digits train split)")


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.formatwarning = lambda message, *_args, **_kw: f"warning: {message}\n"
    try:
        args = build_parser().parse_args(argv)
        commands = {"compile": _compile, "tune": _tune, "deploy": _deploy, "run": _run,
                    "eval": cli_eval_bench.run_eval, "bench": cli_eval_bench.run_bench}
        if getattr(args, "json", False):
            from .json_output import stdout_to_stderr

            with stdout_to_stderr():
                return commands[args.command](args)
        return commands[args.command](args)
    except UserError as exc:
        print(f"tvmquant: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tvmquant: interrupted", file=sys.stderr)
        return 130


def _compile(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .adapters import for_target
    from .compile import compile_model, default_tuning_logs
    from .evaluation import evaluate
    from .outputs import check_output, default_output
    from .pipeline import BuildOptions, TuningRecords
    from .report import print_compile_summary
    from .source import BUILTIN, load_source
    from .validate import load_npy

    target, config = _target(args), _config(args)
    if args.report:
        from .html_report import check_report_path

        check_report_path(args.report)
    _check_training_args(args)
    logs = [args.tuning_log] if args.tuning_log else default_tuning_logs(target)
    model_name = Path(args.model).stem if args.model else BUILTIN
    planned = plan_cli.wants_plan(args)
    inputs = [args.model, args.calib, args.eval_data, args.eval_labels, args.train_data, args.plan_in, *logs]
    plan_cli.check_arguments(args, inputs)
    output = args.output or (plan_cli.default_output(args, model_name, target.name) if planned else
                             default_output(model_name, target.name, config.wbits, config.abits, config.method, args.kernel))
    check_output(output, inputs)
    eval_x = load_npy(args.eval_data, "evaluation data") if args.eval_data else None
    eval_y = load_npy(args.eval_labels, "evaluation labels") if args.eval_labels else None
    source = load_source(args.model, args.input_shape, _calib(args), eval_x, eval_y, args.trust_model)
    request = _request(args, source)
    own = for_target(target).command("compile")
    if own is not None:
        if planned:
            raise UserError(f"--target {target.name} takes no per-layer plan (it compiles its layers its own way)")
        return own(args, source, request)
    if planned:
        request = replace(request, plan=plan_cli.make_plan(args, source, request.config, target))
    options = BuildOptions(args.kernel, TuningRecords.read(logs) if logs else None, args.codes)
    result = compile_model(source, request, target, output, options)
    evaluation = evaluate(result, args.rpc or target.default_rpc)
    print_compile_summary(result, evaluation, args.rpc or target.default_rpc)
    if planned:
        plan_cli.finish(args, result, evaluation)
    if args.report:
        from .html_report import write_compile_report

        print(f"report:   {write_compile_report(args.report, result, evaluation)} (one HTML file; open it in a browser)")
    if args.json:
        from .json_output import compile_record, emit

        emit(compile_record(result, evaluation, args.report))
    return 0


def _target(args: argparse.Namespace):
    """The target file, with --cuda-arch and --float16 applied."""
    from .cuda.target import with_arch, with_float16
    from .target import load_target

    return with_float16(with_arch(load_target(args.target), args.cuda_arch), args.float16)


def _check_training_args(args: argparse.Namespace) -> None:
    if args.train_data and not args.train:
        raise UserError("--train-data is only used with --train")


def _request(args: argparse.Namespace, source):
    """The QuantRequest of compile and tune alike (so tuning records match what compile builds)."""
    from .pipeline import QuantRequest
    from .source import load_train_data
    from .train import TrainConfig

    train = TrainConfig(epochs=args.epochs, lr=args.lr) if args.train else None
    train_data = load_train_data(args.train_data, source.input_shape) if args.train_data else None
    return QuantRequest(_config(args), train, train_data)


def _config(args: argparse.Namespace):
    from .methods.registry import parse_method_opts
    from .quantize import QuantConfig

    return QuantConfig(
        wbits=args.bits if args.wbits is None else args.wbits,
        abits=args.bits if args.abits is None else args.abits,
        first_last_bits=args.first_last_bits,
        method=args.method,
        budget=args.budget,
        act_scale=args.act_scale,
        options=tuple(parse_method_opts(args.method_opt).items()),
    )


def _calib(args: argparse.Namespace):
    from .validate import load_npy

    return load_npy(args.calib, "calibration") if args.calib else None


def _tune(args: argparse.Namespace) -> int:
    from .adapters import for_target
    from .report import print_tune_summary
    from .resources import user_tuning_dir
    from .rpc import parse_address, tracker_servers
    from .source import load_source
    from .tune import Tracker, TuneOptions, tune

    target, config = _target(args), _config(args)  # option errors before any device or model work
    _check_training_args(args)
    if args.trials < 1:
        raise UserError("--trials must be at least 1")
    adapter = for_target(target)
    own = adapter.command("tune")
    if own is not None:
        return own(args, load_source(args.model, args.input_shape, _calib(args), trust_model=args.trust_model), config)
    tracker, workers = None, 1
    if args.rpc_tracker or target.runs == "rpc":
        if not (args.rpc_tracker and args.rpc_key):
            raise UserError(f"tuning for '{target.name}' measures on the device: give --rpc-tracker HOST:PORT and --rpc-key KEY")
        workers = tracker_servers(args.rpc_tracker, args.rpc_key)
        tracker = Tracker(*parse_address(args.rpc_tracker), args.rpc_key)
        print(f"measuring on {workers} server(s) under key '{args.rpc_key}' at {args.rpc_tracker}")
    elif (problem := adapter.local_problem(target)) is not None:
        raise UserError(f"tuning for {target.name} measures on its device, and here there is none ({problem}); "
                        "or give --rpc-tracker HOST:PORT and --rpc-key KEY of its RPC servers")
    source = load_source(args.model, args.input_shape, _calib(args), trust_model=args.trust_model)
    log_dir = args.log_dir or user_tuning_dir(target.name)
    options = TuneOptions(args.trials, tracker, args.timeout, workers, kernel=args.kernel, codes=args.codes)
    results = tune(source, _request(args, source), target, log_dir, options)
    print_tune_summary(results, target.name, log_dir)
    if args.json:
        from .json_output import emit, tune_record

        emit(tune_record(results, source, config, target.name, log_dir))
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from .adapters import for_target
    from .artifact import read_sidecar
    from .device_run import DeviceAddress
    from .target import load_target

    meta, _ = read_sidecar(args.artifact)
    target = load_target(meta["target"])
    own = for_target(target).command("deploy")
    if own is not None:
        return own(args)
    json_for = "deploy" if args.json else None
    if args.rpc_tracker:
        if not args.rpc_key:
            raise UserError("--rpc-tracker needs --rpc-key")
        return run_artifact(args.artifact, target, DeviceAddress(tracker=args.rpc_tracker, key=args.rpc_key),
                            args.repeat, json_for)
    if not args.rpc:
        raise UserError("give --rpc-tracker HOST:PORT --rpc-key KEY, or --rpc HOST:PORT")
    return run_artifact(args.artifact, target, DeviceAddress(rpc=args.rpc), args.repeat, json_for)


def _run(args: argparse.Namespace) -> int:
    from .adapters import for_target
    from .device_run import DeviceAddress
    from .target import load_target

    target = load_target(args.target)
    adapter = for_target(target)
    own = adapter.command("run")
    if own is not None:
        return own(args)
    if adapter.remote(target, bool(args.rpc)):
        if args.profile:
            raise UserError(f"--profile times calls in this process, so it needs a local target, not '{target.name}' over RPC")
        address = DeviceAddress(rpc=args.rpc or target.default_rpc)
    else:
        problem = adapter.local_problem(target)
        if problem is not None:
            raise UserError(problem)
        address = DeviceAddress()
    return run_artifact(args.artifact, target, address, args.repeat, "run" if args.json else None, args.profile)


def run_artifact(artifact: Path, target, address, repeat: int, json_for: str | None = None, profile: bool = False) -> int:
    """Run the artifact's saved inputs on its device (device_run, the path compile's evaluation takes too),
    compare with the reference, print; for run and deploy. `json_for`: the command to emit a --json record for;
    `profile`: also time every function (local only)."""
    from .artifact import read_sidecar
    from .device_run import run_on_device
    from .report import compare, print_comparison

    meta, data = read_sidecar(artifact)
    if meta["target"] != target.name:
        raise UserError(f"{artifact} was compiled for '{meta['target']}', not '{target.name}'")
    batch = meta["input_shape"][0]
    run = run_on_device(target, artifact, data["inputs"], batch, address, repeat, profile)
    print(f"{artifact}  ({meta['model']}, {target.name})")
    comparison = compare(run.outputs, data["reference"], data.get("labels"))
    print_comparison(comparison, meta["eval_label"])
    print(f"latency on {run.where}: {run.latency_ms:.3f} ms per batch of {batch} (median of {repeat} repeats)")
    if profile:
        from .profile import print_profile

        print_profile(run.profile, repeat)
    if json_for:
        from .json_output import emit, run_record

        emit(run_record(json_for, artifact, meta, comparison, run.latency_ms, run.where))
    return 0
