"""The VTA side of the command line: one entry function per command, which the VTA target adapter
(adapters/vta.py, `command`) hands to cli.py for targets whose file names `"adapter": "vta"`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..outputs import check_output, default_output
from ..outputs import sidecar_paths
from ..resources import shipped_tuning_dir, user_tuning_dir
from ..target import TARGETS_DIR, load_target
from .config import VtaConfig, load_config


def tuning_logs(target: str, given: Path | None) -> list[Path]:
    """Where compile looks for VTA tiling records: --tuning-log, else the shipped ones and the user's own."""
    name = Path(target).stem
    return [given] if given else [shipped_tuning_dir(name), user_tuning_dir(name)]


def vta_config(target: str, override: str | None) -> VtaConfig:
    if override:
        return load_config(override)
    path = Path(target) if target.endswith(".json") else TARGETS_DIR / f"{target}.json"
    name = json.loads(path.read_text())["vta_config"]
    return load_config(path.parent / name if name.endswith(".json") else name)


def compile_command(args: argparse.Namespace, source, request) -> int:
    """`compile --target vta`: writes OUT.so, OUT.json/.npz and OUT.vta/, then checks it on the simulator."""
    from .artifact import folder_of
    from .pipeline import compile_vta, vta_quant_config

    target, vta = load_target(args.target), vta_config(args.target, args.vta_config)
    held, _ = vta_quant_config(request.config, vta)
    output = args.output or default_output(source.name, vta.name, held.wbits, held.abits, held.method, args.kernel)
    check_output(output, [args.model, args.calib, args.eval_data, args.eval_labels, args.train_data])
    out = compile_vta(source, request, target, vta, output, tuning_logs(args.target, args.tuning_log), args.kernel)
    for note in out.notes:
        print(f"note: {note}")
    r = out.result
    print(f"{source.name} -> {vta.label}, {r.config.method} W{r.config.wbits}A{r.config.abits} "
          f"(power-of-two activation scales)")
    for name, layer in r.scheme.layers.items():
        if name in out.programs:
            p = out.programs[name]
            t = p.tiling
            tuned = " (tuned)" if name in out.tuned else ""
            print(f"  {name:12s} VTA   {layer.describe():16s} tiling th{t.th} tw{t.tw} tco{t.tco} tci{t.tci} vt{t.vt}{tuned}, "
                  f"{len(p.insns)} instructions, weights {len(p.images['wgt'])} B")
        else:
            print(f"  {name:12s} host  {layer.describe():16s} {r.kernels.get(name, 'float32')}: {out.host_reasons.get(name, '')}")
    for name, why in r.scheme.kept_float.items():
        print(f"  {name:12s} host  float32          {why}")
    meta, data = sidecar_paths(output)
    print(f"wrote {output}, {folder_of(output).name}/ (VTA programs, manifest.json), {meta.name}, {data.name}")
    return report_run(output, limit=args.eval_limit)


def run_command(args: argparse.Namespace) -> int:
    """`run --target vta ARTIFACT`: replay OUT.vta/ on the simulator through the host library."""
    from ..artifact import read_sidecar

    meta, _ = read_sidecar(args.artifact)
    if load_target(meta["target"]).adapter != "vta":
        raise UserError(f"{args.artifact} was compiled for '{meta['target']}', not a VTA target")
    return report_run(args.artifact, limit=getattr(args, "eval_limit", None))


def deploy_command(args: argparse.Namespace) -> int:
    """`deploy` of a VTA artifact: a board is reached through the `pynq` package on the board, not RPC."""
    raise UserError(f"{args.artifact} is a VTA artifact: on a Pynq board, load it with tvmquant.vta.pynq.PynqRunner "
                    "(needs the board, its VTA bitstream and the pynq package; not available here); "
                    "`run --target vta` runs it on the simulator")


def report_run(artifact: Path, limit: int | None = None) -> int:
    from ..batching import run_batched
    from ..artifact import read_sidecar
    from ..report import compare, print_comparison
    from .pipeline import VtaModule

    meta, data = read_sidecar(artifact)
    module = VtaModule(artifact)
    inputs, reference = data["inputs"], data["reference"]
    labels = data.get("labels")
    if limit:
        inputs, reference, labels = inputs[:limit], reference[:limit], None if labels is None else labels[:limit]
    batch = meta["input_shape"][0]
    orders_ok = module.same_under_every_start_order(inputs[:batch])
    outputs = run_batched(module, inputs, batch, "VTA simulator")
    print(f"{artifact}  ({meta['model']}, {module.config.label}, functional simulator)")
    print_comparison(compare(outputs, reference, labels), f"{len(inputs)} of {meta['eval_label']}")
    exact = np.array_equal(outputs, reference)
    print(f"bit-exact with the reference: {'yes' if exact else 'no (float host layers compiled by TVM differ from PyTorch in the last bits)'}; "
          f"first batch identical under all 6 module start orders: {'yes' if orders_ok else 'NO'}")
    print_cycles(module, batch)
    if not orders_ok:
        raise UserError("the VTA programs' output depends on the module start order: their tokens do not order them")
    return 0


def print_cycles(module, batch: int) -> None:
    """Per-layer cycles, bytes and GEMM utilisation for one batch (a program's timing is data-independent)."""
    from .cycles import Counters

    cfg = module.config
    print(f"per batch of {batch}:  {'layer':12s} {'cycles':>10s} {'gemm uops':>10s} {'util':>6s} "
          f"{'wgt B':>9s} {'inp B':>9s} {'acc B':>7s} {'uop B':>7s} {'out B':>8s}")
    total = Counters()
    for name, s in module.stats.items():
        if not s.calls:
            continue
        c = Counters()
        c.add(s.counters)
        per = {k: v // s.calls for k, v in c.load_bytes.items()}
        cycles, gemm = c.cycles // s.calls, c.gemm_uops // s.calls
        print(f"{'':21s}{name:12s} {cycles:10d} {gemm:10d} {gemm / cycles:6.1%} {per['wgt']:9d} {per['inp']:9d} "
              f"{per['acc']:7d} {per['uop']:7d} {c.store_bytes // s.calls:8d}")
        one = Counters(cycles, per, c.store_bytes // s.calls, gemm, c.alu_uops // s.calls)
        total.add(one)
    print(f"{'':21s}{'total':12s} {total.cycles:10d} {total.gemm_uops:10d} {total.utilisation:6.1%} "
          f"{total.load_bytes['wgt']:9d} {total.load_bytes['inp']:9d} {total.load_bytes['acc']:7d} "
          f"{total.load_bytes['uop']:7d} {total.store_bytes:8d}")
    print(f"estimated VTA latency at {cfg.freq_mhz:g} MHz: {total.latency_ms(cfg):.3f} ms per batch "
          f"(VTA layers only; host layers and transfers not counted)")


def tune_command(args: argparse.Namespace, source, config) -> int:
    """`tune --target vta`: search every VTA layer's tiling on simulated cycles (XGBoost-guided)."""
    from .lower import geometry
    from .model import plan_model
    from .pipeline import _input_shapes, vta_quant_config
    from ..quantize import quantize_model
    from .tune import save, tune_layer

    vta = vta_config(args.target, args.vta_config)
    config, _ = vta_quant_config(config, vta)
    scheme = quantize_model(source.gm, source.layers, source.calib, config, source.batch_size)
    layers, _ = plan_model(source.gm, source.layers, scheme, vta, source.calib)
    shapes = _input_shapes(source, set(layers))
    results = []
    print(f"tuning {len(layers)} VTA layer(s) for {vta.label}, {args.trials} trials each (simulated cycles)")
    print(f"  {'layer':12s} {'default':>10s} {'best':>10s} {'speedup':>8s}  measured/space  best tiling")
    for name, layer in layers.items():
        g = geometry(layer, shapes[name], vta.block)
        r = tune_layer(g, vta, args.trials)
        t = r.tiling
        print(f"  {name:12s} {r.default_cycles:10.0f} {r.cycles:10.0f} {r.default_cycles / r.cycles:7.2f}x  "
              f"{r.measured:4d}/{r.candidates:<6d}  th{t.th} tw{t.tw} tco{t.tco} tci{t.tci} vt{t.vt}")
        results.append(r)
    path = save(args.log_dir or user_tuning_dir(Path(args.target).stem), vta, results)
    print(f"records in {path}")
    return 0
