"""Tune each VTA layer's tiling on simulated cycles, guided by an XGBoost cost model.

The knobs are the output tile (rows `th`, columns `tw`, output-channel blocks `tco`), the input-channel blocks
per step (`tci`) and virtual threads (`vt`, 1 or 2 = double buffering), every combination that fits the
SRAMs. A candidate is measured by building its program and running the cycle model (timing only, exact for
the model). XGBoost regresses log-cycles on tile features; each round measures the candidates it predicts
fastest plus one random one. Records: <log folder>/<config>.json (tune writes to the user folder,
compile also reads the shipped tuning_logs/vta/), one per layer geometry, with the default
tiling's cycles beside the best, so `compile` takes only a tiling that measured faster.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .config import VtaConfig
from .lower import Geometry, Tiling, build, default_tiling, fits
from .program import ProgramError
from .simulator import estimate


def _sizes(n: int) -> list[int]:
    """1, 2, 4, ... below n, and n itself."""
    return sorted({1 << i for i in range(n.bit_length()) if 1 << i < n} | {n})


def space(g: Geometry, config: VtaConfig) -> list[Tiling]:
    return [t for th in _sizes(g.oh) for tw in _sizes(g.ow) for tco in _sizes(g.ob) for tci in _sizes(g.cb)
            for vt in (1, 2) if fits(g, t := Tiling(th, tw, tco, tci, vt), config) is None]


def measure(g: Geometry, t: Tiling, config: VtaConfig) -> float | None:
    """Simulated cycles of the layer with tiling t, or None if it cannot be built (e.g. micro-ops overflow)."""
    try:
        program, _ = build(g, t, config)
    except ProgramError:
        return None
    return float(estimate(config, program.insns).cycles)


def features(g: Geometry, t: Tiling) -> list[float]:
    tiles = math.ceil(g.oh / t.th) * math.ceil(g.ow / t.tw) * math.ceil(g.ob / t.tco) * g.n
    steps = math.ceil(g.cb / t.tci)
    rows, cols = (t.th - 1) * g.sh + g.kh, (t.tw - 1) * g.sw + g.kw
    return [t.th, t.tw, t.tco, t.tci, t.vt, math.log2(tiles), steps, t.tci * rows * cols, t.tco * t.tci * g.kh * g.kw,
            t.tco * t.th * t.tw, math.log2(tiles * steps), t.th * t.tw]


@dataclass
class LayerTuning:
    geometry: str
    tiling: Tiling
    cycles: float
    default: Tiling
    default_cycles: float
    measured: int
    candidates: int


def tune_layer(g: Geometry, config: VtaConfig, trials: int, seed: int = 0, batch: int = 4) -> LayerTuning:
    import xgboost

    rng = np.random.default_rng(seed)
    cands = space(g, config)
    default = default_tiling(g, config)
    done: dict[Tiling, float | None] = {default: measure(g, default, config)}
    while len(done) < min(trials, len(cands) + 1):
        todo = [t for t in cands if t not in done]
        if not todo:
            break
        valid = [(t, c) for t, c in done.items() if c is not None]
        if len(valid) >= 4:
            model = xgboost.XGBRegressor(n_estimators=60, max_depth=4, learning_rate=0.3, random_state=seed, n_jobs=1)
            model.fit(np.array([features(g, t) for t, _ in valid]), np.log([c for _, c in valid]))
            pred = model.predict(np.array([features(g, t) for t in todo]))
            pick = [todo[i] for i in np.argsort(pred)[: batch - 1]]
            rest = [t for t in todo if t not in pick]
            pick += [rest[rng.integers(len(rest))]] if rest else []
        else:
            pick = [todo[i] for i in rng.choice(len(todo), min(batch, len(todo)), replace=False)]
        for t in pick[: max(0, trials - len(done))] or pick[:1]:
            done[t] = measure(g, t, config)
    best = min((t for t, c in done.items() if c is not None), key=lambda t: done[t])
    return LayerTuning(g.key(), best, done[best], default, done[default], len(done), len(cands))


def log_path(folder: Path, config: VtaConfig) -> Path:
    return folder / f"{config.name}.json"


def save(folder: Path, config: VtaConfig, results: list[LayerTuning]) -> Path:
    """Merge into the log (a better tiling for a geometry replaces a worse one); written atomically."""
    path = log_path(folder, config)
    records = _read(path)
    for r in results:
        old = records.get(r.geometry)
        if old is None or r.cycles < old["cycles"]:
            records[r.geometry] = {"geometry": r.geometry, "tiling": asdict(r.tiling), "cycles": r.cycles,
                                   "default": asdict(r.default), "default_cycles": r.default_cycles}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps({"config": config.name, "records": list(records.values())}, indent=1))
    os.replace(tmp, path)
    return path


def _read(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    try:
        return {r["geometry"]: r for r in json.loads(path.read_text())["records"]}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: damaged VTA tuning log: {exc}") from exc


def load_tilings(folders: list[Path], config: VtaConfig) -> dict[str, Tiling]:
    """{geometry key: tiling} of the fastest record per geometry over `folders`, if it beat the default."""
    best: dict[str, dict] = {}
    for folder in folders:
        for key, r in _read(log_path(folder, config)).items():
            if r["cycles"] < r["default_cycles"] and (key not in best or r["cycles"] < best[key]["cycles"]):
                best[key] = r
    return {k: Tiling(**r["tiling"]) for k, r in best.items()}
