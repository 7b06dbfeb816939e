"""`tvmquant` / `python -m tvmquant`: compile a PyTorch model to a low-bit TVM module, run it on a device."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .errors import UserError

EPILOG = """examples:
  python -m tvmquant compile --target arm_cpu --bits 2        built-in digits CNN, W2A2, for 64-bit ARM
  python -m tvmquant compile --model net.pt2 --calib x.npy --wbits 2 --abits 4 -o net.so
  python -m tvmquant run --target arm_cpu --rpc 127.0.0.1:9091 tvmquant_out/digits_cnn-arm_cpu-w2a2.so
"""


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected dims like 1,3,224,224, got '{text}'") from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"dims must be positive, got '{text}'")
    return dims


def _first_last(text: str) -> int | None:
    if text == "fp32":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 1..8 or fp32, got '{text}'") from None


def build_parser() -> argparse.ArgumentParser:
    from .quantize import METHODS, QAT_METHODS

    parser = argparse.ArgumentParser(
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
        "compiled module.",
    )
    comp.add_argument("--model", help="a torch.export archive (.pt2, from torch.export.save); default: built-in digits CNN")
    comp.add_argument("--input-shape", type=_shape, help="input shape, e.g. 1,3,224,224 (default: from the model)")
    comp.add_argument("--target", default="x86", help="a name in targets/ (x86, arm_cpu) or a target .json file (default: x86)")
    comp.add_argument("--bits", type=int, default=2, help="weight and activation bits, 1-8 (default: 2)")
    comp.add_argument("--wbits", type=int, help="weight bits, overrides --bits")
    comp.add_argument("--abits", type=int, help="activation bits, overrides --bits")
    comp.add_argument("--first-last-bits", type=_first_last, default=8, metavar="{1..8,fp32}",
                      help="precision of the first and last layer, which hurt accuracy most (default: 8)")
    comp.add_argument("--method", default="uniform", help=f"quantization method: {', '.join(METHODS)} (default: uniform)")
    comp.add_argument("--budget", type=float, default=0.1,
                      help="multipoint: extra weight rows allowed, as a fraction of all output channels (default: 0.1)")
    comp.add_argument("--train", action="store_true",
                      help=f"quantization-aware fine-tuning ({', '.join(QAT_METHODS)}); otherwise post-training")
    comp.add_argument("--epochs", type=int, default=3, help="--train: epochs (default: 3)")
    comp.add_argument("--lr", type=float, default=1e-4, help="--train: Adam learning rate (default: 1e-4)")
    comp.add_argument("--train-data", help="--train: .npz with arrays x (N, ...) and y (N,) labels (default: built-in digits train split)")
    comp.add_argument("--calib", help="calibration inputs, .npy of shape (N, ...) (default: the built-in model's held-out calibration digits)")
    comp.add_argument("--eval-data", help="evaluation inputs, .npy (default: built-in test digits, else the calibration data)")
    comp.add_argument("--eval-labels", help="integer labels for --eval-data, .npy, to report accuracy")
    comp.add_argument("--rpc", help="HOST:PORT of a TVM RPC server to evaluate a non-local target on (default: the target's)")
    comp.add_argument("-o", "--output", type=Path, help="artifact path (default: tvmquant_out/MODEL-TARGET-wWaA.so)")

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
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.formatwarning = lambda message, *_args, **_kw: f"warning: {message}\n"
    args = build_parser().parse_args(argv)
    try:
        return _compile(args) if args.command == "compile" else _run(args)
    except UserError as exc:
        print(f"tvmquant: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tvmquant: interrupted", file=sys.stderr)
        return 130


def _compile(args: argparse.Namespace) -> int:
    from .compile import BUILTIN, compile_model, load_array, load_source, load_train_data
    from .quantize import QuantConfig
    from .train import TrainConfig
    from .report import print_compile_summary
    from .target import load_target

    target = load_target(args.target)
    config = QuantConfig(
        wbits=args.bits if args.wbits is None else args.wbits,
        abits=args.bits if args.abits is None else args.abits,
        first_last_bits=args.first_last_bits,
        method=args.method,
        budget=args.budget,
    )
    train = TrainConfig(epochs=args.epochs, lr=args.lr) if args.train else None
    if args.train_data and not args.train:
        raise UserError("--train-data is only used with --train")
    calib = load_array(args.calib, "calibration") if args.calib else None
    eval_x = load_array(args.eval_data, "evaluation data") if args.eval_data else None
    eval_y = load_array(args.eval_labels, "evaluation labels") if args.eval_labels else None
    source = load_source(args.model, args.input_shape, calib, eval_x, eval_y)
    output = args.output or Path("tvmquant_out") / (
        f"{source.name if args.model else BUILTIN}-{target.name}-w{config.wbits}a{config.abits}.so"
    )
    train_data = load_train_data(args.train_data, source.input_shape) if args.train_data else None
    result = compile_model(source, config, target, output, train, train_data)
    print_compile_summary(result, args.rpc or target.default_rpc)
    return 0


def _run(args: argparse.Namespace) -> int:
    from .batching import run_batched
    from .compile import read_sidecar
    from .report import compare, print_comparison
    from .rpc import DeviceModule, connect, device_errors
    from .target import load_target

    target = load_target(args.target)
    meta, data = read_sidecar(args.artifact)
    if meta["target"] != target.name:
        raise UserError(f"{args.artifact} was compiled for '{meta['target']}', not '{target.name}'")
    if target.runs == "rpc":
        address = args.rpc or target.default_rpc
        where = f"{target.name} device at {address}"
    else:
        address, where = None, f"{target.name} (this machine)"
    batch = meta["input_shape"][0]
    with device_errors(where):
        module = DeviceModule.remote(connect(address), args.artifact) if address else DeviceModule.local(args.artifact)
        outputs = run_batched(module, data["inputs"], batch, f"running on {where}")
        latency = module.latency_ms(data["inputs"][:batch], repeat=args.repeat)
    print(f"{args.artifact}  ({meta['model']}, {target.name})")
    print_comparison(compare(outputs, data["reference"], data.get("labels")), meta["eval_label"])
    print(f"latency on {where}: {latency:.3f} ms per batch of {batch} (median of {args.repeat} repeats)")
    return 0

