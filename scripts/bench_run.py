"""The benchmark's run: set up and check every variant of a case, time them interleaved, then the memory pass,
the ceilings and the report. Kept apart from bench.py so that the memory child imports nothing of this."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import bench_ceilings
import bench_report
from bench_cases import QUICK, Case, all_cases
from bench_variants import PEERS, CheckFailed, Context, Prepared, Unavailable, Variant, our_variants
from tvmquant.bench_cmd import time_call
from tvmquant.errors import UserError
from tvmquant.target import load_target

CALIB_BATCHES = 4


def select_cases(args: argparse.Namespace) -> list[Case]:
    cases = all_cases()
    wanted = args.only or (list(QUICK) if args.quick else [c.name for c in cases])
    unknown = set(wanted) - {c.name for c in cases}
    if unknown:
        raise UserError(f"unknown case(s) {', '.join(sorted(unknown))}; known: {', '.join(c.name for c in cases)}")
    return [c for c in cases if c.name in wanted]


def make_context(case: Case, args: argparse.Namespace, workdir: Path) -> Context:
    batch = case.input_shape[0]
    x = case.inputs(batch, seed=1)
    calib = case.inputs(CALIB_BATCHES * batch, seed=2)
    with torch.no_grad():
        fp32 = case.module()(torch.from_numpy(x)).numpy()
    return Context(case, x, calib, fp32, load_target("x86"), args.trials, args.e2e_trials, args.tuning_log,
                   workdir, progress=not args.no_progress)


def setup_all(variants: list[Variant], ctx: Context, progress: bool) -> tuple[dict[str, Prepared], dict[str, str]]:
    """Prepared variants, and for the others why not ("n/a: ...", "CHECK FAILED: ...")."""
    prepared, status = {}, {}
    bar = tqdm(variants, desc=f"{ctx.case.name}: build+check", disable=not progress, leave=False)
    for variant in bar:
        bar.set_postfix_str(variant.key)
        try:
            prepared[variant.key] = variant.setup(ctx)
            status[variant.key] = "ok"
        except Unavailable as exc:
            status[variant.key] = f"n/a: {exc}"
        except CheckFailed as exc:
            status[variant.key] = f"CHECK FAILED: {exc}"
            tqdm.write(f"!!! {ctx.case.name} / {variant.label}: CHECK FAILED: {exc}", file=sys.stderr)
        except Exception as exc:  # one broken variant must not lose the whole run; it still fails it
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            status[variant.key] = f"ERROR: {type(exc).__name__}: {first}"
            tqdm.write(f"!!! {ctx.case.name} / {variant.label}: {status[variant.key]}", file=sys.stderr)
    return prepared, status


def time_interleaved(prepared: dict[str, Prepared], rounds: int, min_time: float, desc: str,
                     progress: bool) -> dict[str, list[float]]:
    """One timing of every variant per round; the order rotates each round so none always goes first."""
    keys = list(prepared)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in tqdm(range(rounds), desc=desc, disable=not progress, leave=False):
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:
            times[key].append(1e3 * time_call(prepared[key].run, min_time))
    return times


def run_case(case: Case, args: argparse.Namespace, workdir: Path) -> dict:
    ctx = make_context(case, args, workdir)
    variants = [v for v in PEERS + our_variants(case, args.quick) if v.key not in args.skip]
    prepared, status = setup_all(variants, ctx, not args.no_progress)
    times = time_interleaved(prepared, args.rounds, args.min_time, f"{case.name}: timing", not args.no_progress)
    input_path = workdir / f"{case.name}-input.npy"
    np.save(input_path, ctx.x)
    rows = {}
    for v in variants:
        row = {"label": v.label, "group": v.group, "status": status[v.key]}
        p = prepared.get(v.key)
        if p is not None:
            row |= {"family": p.family, "check": p.check, "weight_bytes": p.weight_bytes, "note": p.note,
                    "times_ms": times[v.key], "median_ms": float(np.median(times[v.key])),
                    "artifact": [p.artifact[0], str(p.artifact[1])]}
            if p.work is not None:
                row["work"] = p.work
        rows[v.key] = row
    return {"title": case.title, "kind": case.kind, "input": str(input_path),
            "geometry": vars(case.geometry) if case.geometry else None, "variants": rows}


def memory_pass(results: dict, threads: int, progress: bool) -> None:
    """Peak RSS of a fresh process that loads each saved variant and runs it 5 times, minus its RSS just before
    loading (after importing torch, tvm and onnxruntime and reading the input; the peak mark is reset there)."""
    jobs = [(c, k, r) for c, case in results.items() for k, r in case["variants"].items() if "artifact" in r]
    for case_name, key, row in tqdm(jobs, desc="peak memory (one process each)", disable=not progress):
        kind, path = row["artifact"]
        cmd = [sys.executable, str(Path(__file__).with_name("bench.py")), "--threads", str(threads),
               "--memory-child", kind, path, results[case_name]["input"]]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if proc.returncode != 0:
            row["peak_mb_error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            continue
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        row["peak_mb"] = child["peak_mb"] - child["baseline_mb"]
        row["peak_mb_total"] = child["peak_mb"]


def environment(args: argparse.Namespace, command: str) -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    packages = ["torch", "apache-tvm", "apache-tvm-ffi", "onnxruntime", "onnx", "numpy", "xgboost"]
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": fields.get("Model name", platform.processor()).strip(),
        "cores": os.cpu_count(),
        "l3": fields.get("L3 cache", "?").strip(),
        "flags_avx512_vpopcntdq": "avx512_vpopcntdq" in fields.get("Flags", ""),
        "llvm_mcpu": load_target("x86").tvm_target.mcpu,
        "python": platform.python_version(),
        "versions": versions,
        "threads": args.threads,
        "rounds": args.rounds,
        "trials": args.trials,
        "e2e_trials": args.e2e_trials,
        "min_time_s": args.min_time,
        "spin_wait": args.spin_wait,
        "tuning_log": str(args.tuning_log) if args.tuning_log else None,
        "loadavg_start": os.getloadavg(),
    }


def l3_bytes(text: str) -> int:
    """lscpu's "32 MiB (1 instance)" -> bytes."""
    number, unit = text.split()[:2]
    return int(float(number) * {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}.get(unit, 1))


def _write(data: dict, started: float, out: Path) -> None:
    data["environment"]["loadavg_end"] = os.getloadavg()
    data["environment"]["wall_s"] = time.time() - started
    bench_report.write(data, out)


def run(args: argparse.Namespace, command: str) -> int:
    try:
        cases = select_cases(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    env = environment(args, command)
    env["ceilings"] = bench_ceilings.measure(load_target("x86").tvm_target, args.threads, l3_bytes(env["l3"]))
    started, results = time.time(), {}
    data = {"environment": env, "cases": results}
    with tempfile.TemporaryDirectory(prefix="tvmquant-bench-") as tmp:
        for case in cases:
            results[case.name] = run_case(case, args, Path(tmp))
            _write(data, started, args.out)  # a run cut short still leaves the cases it finished
        if not args.no_memory:
            memory_pass(results, args.threads, not args.no_progress)
    for case in results.values():
        for row in case["variants"].values():
            row.pop("artifact", None)
        case.pop("input")
    _write(data, started, args.out)
    failed = [f"{c}/{r['label']}" for c, case in results.items() for r in case["variants"].values()
              if r["status"].startswith(("CHECK FAILED", "ERROR"))]
    print(bench_report.summary(data))
    if failed:
        print(f"!!! FAILED (check or error): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
