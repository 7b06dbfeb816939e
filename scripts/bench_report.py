"""The benchmark's outputs from its raw numbers: BENCHMARKS.md (tables, goals, ceilings), benchmarks.json and
benchmarks.png. Everything here is computed from the run's data; nothing is typed in."""

from __future__ import annotations

import json
from pathlib import Path

from bench_cases import Geometry

PEER_COLUMNS = [("torch_fp32", "PyTorch fp32"), ("tvm_fp32", "TVM fp32"), ("torch_int8", "PyTorch int8"),
                ("ort_int8", "ORT int8"), ("ort_int4", "ORT 4-bit")]
CONVS = ("conv56", "conv28", "conv14", "conv7")


def median(case: dict, key: str) -> float | None:
    return case["variants"].get(key, {}).get("median_ms")


def ratio(case: dict, peer: str, key: str) -> float | None:
    """Speed-up of `key` over `peer` (ratio of medians; > 1: `key` is faster)."""
    a, b = median(case, peer), median(case, key)
    return a / b if a and b else None


def _fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "–"
    for unit, size in (("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _fmt_mb(row: dict) -> str:
    if "peak_mb" in row:
        return f"{row['peak_mb']:.1f}"
    return "error" if "peak_mb_error" in row else "–"


def case_table(case: dict) -> list[str]:
    head = ["variant", "kernel / kind", "median ms", "min ms"] + [f"vs {label}" for _, label in PEER_COLUMNS]
    head += ["weight bytes", "peak MB", "check"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, row in case["variants"].items():
        if row["status"] != "ok":
            lines.append(f"| {row['label']} | {row['status']} |" + " |" * (len(head) - 2))
            continue
        ratios = [_fmt_ratio(ratio(case, peer, key)) if peer != key else "1" for peer, _ in PEER_COLUMNS]
        cells = [row["label"], row["family"], f"{row['median_ms']:.3f}", f"{min(row['times_ms']):.3f}", *ratios, _fmt_bytes(row["weight_bytes"]),
                 _fmt_mb(row), row["check"]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _goal(name: str, value: float | None, target: float, what: str) -> dict:
    met = value is not None and value >= target
    return {"goal": name, "target": target, "measured": value, "met": met, "what": what}


def goals(cases: dict) -> list[dict]:
    """The issue's goals, each as a measured ratio against its threshold."""
    rows = []
    for name in CONVS:
        case = cases.get(name)
        if case is None:
            continue
        w2a2 = "ours_uniform_w2a2"
        fam = case["variants"].get(w2a2, {}).get("family", "?")
        rows.append(_goal(f"{name} W2A2 ≥ 3x tuned TVM fp32", ratio(case, "tvm_fp32", w2a2), 3.0, _vs_tvm(case, fam)))
        rows.append(_goal(f"{name} W2A2 ≥ 2x PyTorch fp32", ratio(case, "torch_fp32", w2a2), 2.0, fam))
        rows.append(_goal(f"{name} W2A2 ≥ 1.5x PyTorch int8", ratio(case, "torch_int8", w2a2), 1.5, fam))
    gemv = cases.get("gemv")
    if gemv is not None:
        key, fam = best_codebook(gemv)
        rows.append(_goal("2-bit LUT GEMV ≥ 6x PyTorch fp32", ratio(gemv, "torch_fp32", key) if key else None, 6.0, fam))
        rows.append(_goal("2-bit LUT GEMV faster than ORT 4-bit", ratio(gemv, "ort_int4", key) if key else None, 1.0, fam))
    resnet = cases.get("resnet18")
    if resnet is not None:
        key = "ours_uniform_w2a2"
        fam = resnet["variants"].get(key, {}).get("family", "?")
        rows.append(_goal("ResNet-18 W2A2 ≥ 2.5x tuned TVM fp32", ratio(resnet, "tvm_fp32", key), 2.5,
                          _vs_tvm(resnet, fam)))
    return rows


def _vs_tvm(case: dict, family: str) -> str:
    """A goal against tuned TVM says how TVM fp32 was built (untuned when --trials 0)."""
    return f"{family}; TVM: {case['variants'].get('tvm_fp32', {}).get('family', 'not run')}"


def best_codebook(case: dict) -> tuple[str | None, str]:
    """The fastest 2-bit CODEBOOK (uniq) variant that ran, and its kernel family (LUT once tvmquant has it)."""
    timed = [(r["median_ms"], k, r) for k, r in case["variants"].items() if k.startswith("ours_uniq_w2") and "median_ms" in r]
    if not timed:
        return None, "no 2-bit CODEBOOK variant ran"
    _, key, row = min(timed)
    return key, f"{row['label']}, kernel: {row['family']}"


def goals_table(rows: list[dict]) -> list[str]:
    lines = ["| goal | measured | result | variant / kernel |", "|---|---|---|---|"]
    for g in rows:
        measured = "not measured" if g["measured"] is None else f"{g['measured']:.2f}x"
        lines.append(f"| {g['goal']} | {measured} | {'met' if g['met'] else 'missed'} | {g['what']} |")
    return lines


def popcount_ceilings(cases: dict, rates: dict) -> list[str]:
    """Bit-serial variants vs the time the popcount work alone needs at the measured popcount rate."""
    lines = ["| layer | variant | 64-bit popcounts | ceiling ms | measured ms | % of ceiling |", "|---|---|---|---|---|---|"]
    for name, case in cases.items():
        if not case["geometry"]:
            continue
        geometry = Geometry(**case["geometry"])
        for key, row in case["variants"].items():
            if row.get("family") != "bitserial" or "median_ms" not in row:
                continue
            wbits, abits = (int(b) for b in key.rsplit("_w", 1)[1].split("a"))
            words = geometry.popcount_words(wbits, abits)
            ceiling = 1e3 * words / rates["popcount_words_per_s"]
            lines.append(f"| {name} | {row['label']} | {words:.3g} | {ceiling:.4f} | {row['median_ms']:.4f} "
                         f"| {100 * ceiling / row['median_ms']:.0f}% |")
    return lines


def model_ceilings(cases: dict, rates: dict) -> list[str]:
    """Whole models: the popcount work of the bit-serial layers at the popcount rate plus the int8 layers'
    `vpdpbusd` steps at the VNNI rate, against the measured end-to-end time (which also holds the fp32 ops,
    quantizing and packing, and the VM)."""
    lines = ["| model | variant | popcount words | vpdpbusd steps | ceiling ms | measured ms | % of ceiling | not counted |",
             "|---|---|---|---|---|---|---|---|"]
    dots_rate = rates.get("vnni_dots_per_s")
    for name, case in cases.items():
        for row in case["variants"].values():
            work = row.get("work")
            if work is None or "median_ms" not in row:
                continue
            if work["vnni_dots"] and not dots_rate:
                continue  # no VNNI on this machine: int8 layers have no measured rate to bound them
            ceiling = 1e3 * (work["popcount_words"] / rates["popcount_words_per_s"]
                             + (work["vnni_dots"] / dots_rate if work["vnni_dots"] else 0.0))
            rest = ", ".join(work["uncounted"]) or "–"
            lines.append(f"| {name} | {row['label']} | {work['popcount_words']:.3g} | {work['vnni_dots']:.3g} "
                         f"| {ceiling:.3f} | {row['median_ms']:.3f} | {100 * ceiling / row['median_ms']:.0f}% | {rest} |")
    return lines


def bandwidth_ceilings(case: dict, rates: dict) -> list[str]:
    """GEMV: each variant's weights must be read once per call; bound by DRAM, or by the L3 when they fit."""
    lines = ["| variant | weight bytes | memory level | bound ms | measured ms | % of bound |", "|---|---|---|---|---|---|"]
    for row in case["variants"].values():
        if "median_ms" not in row:
            continue
        nbytes = row["weight_bytes"]
        in_l3 = nbytes <= rates["l3_bytes"] // 2
        rate = rates["l3_bytes_per_s" if in_l3 else "dram_bytes_per_s"] / 2  # copy rate counts read + write
        bound = 1e3 * nbytes / rate
        lines.append(f"| {row['label']} | {_fmt_bytes(nbytes)} | {'L3' if in_l3 else 'DRAM'} | {bound:.4f} "
                     f"| {row['median_ms']:.4f} | {100 * bound / row['median_ms']:.0f}% |")
    return lines


def markdown(data: dict) -> str:
    env, cases = data["environment"], data["cases"]
    rates = env["ceilings"]
    v = env["versions"]
    out = [
        "# Benchmarks",
        "",
        f"Generated by `{env['command']}` on {env['date']} (wall time {env['wall_s'] / 60:.1f} min).",
        "",
        f"- Machine: {env['cpu']} ({env['cores']} cores visible, L3 {env['l3']}, AVX-512 VPOPCNTDQ: "
        f"{'yes' if env['flags_avx512_vpopcntdq'] else 'no'}), LLVM mcpu `{env['llvm_mcpu']}`, Python {env['python']}.",
        f"- Threads: {env['threads']} for everything (torch.set_num_threads, TVM_NUM_THREADS, ORT intra_op_num_threads); "
        + ("thread pools spin-wait as each library does by default (--spin-wait)."
           if env.get("spin_wait") else
           "idle pool threads of PyTorch and ORT wait passively (OMP_WAIT_POLICY=PASSIVE, ORT allow_spinning=0), so "
           "that one variant's busy-spinning threads do not steal the cores from the next in an interleaved round "
           "(with default spinning, PyTorch's 3x3 conv measured 5x slower here under load); TVM's pool keeps its "
           "default (its spin loop yields the core; a spin count of 0 hung TVM 0.27's pool on a lost wake-up)."),
        f"- Load average (1/5/15 min) at start {_load(env['loadavg_start'])}, at end {_load(env['loadavg_end'])}: "
        "other jobs shared this machine; ratios of interleaved medians are meaningful, absolute times less so.",
        f"- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        f"- Timing: all variants of a case in one process, {env['rounds']} interleaved rounds (every variant timed once "
        f"per round, rotating order), each timing = calls repeated for ≥ {env['min_time_s'] * 1e3:.0f} ms; medians "
        "(and the fastest round, less disturbed by other load); ratios are speed-ups of medians (peer median / "
        "variant median, > 1 = faster than that peer).",
        f"- TVM fp32: " + (f"MetaSchedule (XGBoost cost model), {env['trials']} trials per task on single layers, "
                           f"{env['e2e_trials']} trials in total per model (gradient task scheduler)"
                           if env["trials"] > 0 else "untuned (--trials 0): TVM's default Relax pipeline")
        + "; records cached in `~/.cache/tvmquant/bench_tuning/`.",
        "- Ours: a one-layer torch module through tvmquant's public pipeline (`pipeline.quantize` with random "
        "calibration data, `pipeline.build`); the kernel column is the family the lowering chose. "
        "Models: first and last layer at W8A8 (the default). Our kernels use their default schedules"
        + (f" plus the records of `{env['tuning_log']}`." if env["tuning_log"] else " (no --tuning-log)."),
        "- Correctness: ours checked against `tvmquant.reference` (the quantized PyTorch layer/model of the same "
        "scheme, max |diff| / max |ref| ≤ 1e-5); peers against PyTorch fp32 (relative L2 ≤ 1e-4 fp32, 0.1 int8, "
        "0.25 4-bit). Nothing is timed without passing.",
        "- Weight bytes: PyTorch fp32 = parameters; PyTorch int8 = int8 weights + float32 per-channel scales + "
        "biases; ORT = sum of initializers; TVM and ours = sum of the Relax constants of the lowered module "
        "(our bit-planes, per-channel sums/scales, biases; the dequant fallback holds float64 weights).",
        "- Peak MB: a fresh process per variant loads the saved artifact (torch.save module, TorchScript trace for "
        "PyTorch int8, .onnx, exported TVM .so) and runs it 5 times; reported is its peak RSS (VmHWM, reset with "
        "clear_refs after importing torch, tvm, onnxruntime and reading the input) minus its RSS at that point. "
        "Measured in a pass after timing.",
        "",
    ]
    for name, case in cases.items():
        out += [f"## {case['title']} (`{name}`)", "", *case_table(case), ""]
    out += ["## Goals", "", *goals_table(goals(cases)), ""]
    out += [
        "## Physical ceilings",
        "",
        f"- Popcount: {rates['popcount_words_per_s'] / 1e9:.1f} G 64-bit words/s on {env['threads']} threads, measured "
        "with a TVM micro-kernel (16 u64 lanes of VPOPCNTQ, each with a XOR and a 64-bit add, L1-resident data) - "
        "the cheapest form of the bit-serial inner loop. A W·A-bit layer needs "
        "N·OH·OW·KH·KW·⌈C/64⌉·A·(O·W + 1) such words (the +1: activation sums). The measured kernels also "
        "quantize and bit-pack their float input and rescale the output; the ceiling counts none of that.",
        (f"- 8-bit dot: {rates['vnni_dots_per_s'] / 1e9:.2f} G `vpdpbusd` (16 x 4 byte products) per second on "
         f"{env['threads']} threads, measured with the int8 family's own tensor intrinsic "
         f"({rates['vnni_accumulators']} independent accumulators per thread, L1-resident operands)."
         if rates.get("vnni_dots_per_s") else
         "- 8-bit dot: no AVX-512 VNNI on this machine, so int8 layers have no measured ceiling."),
        f"- Memory: copy bandwidth (read + write) {rates['dram_bytes_per_s'] / 1e9:.1f} GB/s from DRAM (512 MiB arrays) "
        f"and {rates['l3_bytes_per_s'] / 1e9:.1f} GB/s within the L3, numpy copy split over {env['threads']} threads; "
        "a GEMV must read its weights once per call at half that rate (reads only).",
        "",
        "### Bit-serial layers vs the popcount ceiling",
        "",
        *popcount_ceilings(cases, rates),
        "",
    ]
    if any("work" in row for case in cases.values() for row in case["variants"].values()):
        out += ["### Whole models vs the sum of their kernels' ceilings", "", *model_ceilings(cases, rates), ""]
    if "gemv" in cases:
        out += ["### GEMV vs the memory-bandwidth bound", "", *bandwidth_ceilings(cases["gemv"], rates), ""]
    out += ["![speed-up vs PyTorch fp32](benchmarks.png)", ""]
    return "\n".join(out)


def _load(values) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def plot(data: dict, path: Path) -> None:
    """Grouped bars per case: each timed variant's speed-up over PyTorch fp32, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = data["cases"]
    keys = list(dict.fromkeys(k for c in cases.values() for k, r in c["variants"].items() if "median_ms" in r))
    labels = {k: r["label"] for c in cases.values() for k, r in c["variants"].items()}
    width = 0.8 / max(len(keys), 1)
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(cases)), 5))
    cmap = plt.get_cmap("tab20")
    for i, key in enumerate(keys):
        xs, ys = [], []
        for j, case in enumerate(cases.values()):
            value = ratio(case, "torch_fp32", key)
            if value:
                xs.append(j + (i - len(keys) / 2 + 0.5) * width)
                ys.append(value)
        ax.bar(xs, ys, width, label=labels[key], color=cmap(i % 20))
    ax.axhline(1, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(list(cases), rotation=0)
    ax.set_ylabel("speed-up over PyTorch fp32 (median, log)")
    env = data["environment"]
    ax.set_title(f"{env['cpu']}, {env['threads']} threads, {env['date'][:10]}")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(data: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data["goals"] = goals(data["cases"])
    (out / "benchmarks.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    (out / "BENCHMARKS.md").write_text(markdown(data))
    try:
        plot(data, out / "benchmarks.png")
    except ImportError:
        print("matplotlib not installed: no benchmarks.png (pip install -e .[bench])")


def summary(data: dict) -> str:
    """Console summary: medians per case and the goals."""
    lines = []
    for name, case in data["cases"].items():
        cells = [f"{r['label']} {r['median_ms']:.3f}" for r in case["variants"].values() if "median_ms" in r]
        lines.append(f"{name}: " + ", ".join(cells) + " (ms)")
    lines += [f"goal {'met   ' if g['met'] else 'MISSED'} {g['goal']}: "
              + ("not measured" if g["measured"] is None else f"{g['measured']:.2f}x") for g in data["goals"]]
    return "\n".join(lines)
