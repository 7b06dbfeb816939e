"""Faults: `tune` (x86, measured on this machine, no network) killed at random points, SIGKILL and SIGTERM,
again and again on one log folder. After every kill the database parses and holds every record it held
before; a SIGTERMed run removes its own temp folders, and a SIGKILLed run's are removed by the next start;
a final uninterrupted run completes and leaves no temp folder behind.

The default suite runs a short variant (2 kills); the 20-kill loop is `slow` (tens of minutes on 2 cores).
"""

import json
import os
import random
import signal
import subprocess
import sys
import warnings

import pytest

from tvmquant.database import RECORDS, WORKLOADS, read_database

from models_for_tests import save_tiny

RUN_TIMEOUT = 900


def _tune(model, calib, log_dir, trials, env):
    cmd = [sys.executable, "-m", "tvmquant", "tune", "--target", "x86", "--model", model, "--calib", calib,
           "--log-dir", str(log_dir), "--trials", str(trials), "--timeout", "120"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _complete_records(log_dir) -> set[tuple[str, str]]:
    """(workload hash, record) of every complete record line: what must survive any later kill."""
    if not (log_dir / WORKLOADS).is_file():
        return set()
    hashes = []
    for line in (log_dir / WORKLOADS).read_text().splitlines():
        try:
            hashes.append(json.loads(line)[0])
        except (ValueError, IndexError, KeyError):
            hashes.append(None)
    kept = set()
    for line in (log_dir / RECORDS).read_text().splitlines() if (log_dir / RECORDS).is_file() else []:
        try:
            index, record = json.loads(line)
        except ValueError:
            continue  # a line cut short by the kill: it was never complete
        if 0 <= index < len(hashes) and hashes[index] is not None:
            kept.add((hashes[index], json.dumps(record[:2])))
    return kept


def _ours(tmp_root) -> list[str]:
    return sorted(name for name in os.listdir(tmp_root) if name.startswith("tvmquant-"))


def _kill_loop(tmp_path, kills: int, window: tuple[float, float], seed: int) -> dict:
    model, calib = save_tiny(tmp_path)
    log_dir, tmp_root = tmp_path / "logs", tmp_path / "tmp"
    tmp_root.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_root), "PYTHONPATH": os.pathsep.join(sys.path)}
    rng = random.Random(seed)
    held: set[tuple[str, str]] = set()
    stats = {"killed": 0, "finished": 0, "records": 0}
    trials = 2
    for i in range(kills):
        proc = _tune(model, calib, log_dir, trials, env)
        sig = signal.SIGTERM if i % 3 == 2 else signal.SIGKILL
        try:
            proc.wait(timeout=rng.uniform(*window))
            stats["finished"] += 1
            trials += 2  # give the next run something to do
        except subprocess.TimeoutExpired:
            proc.send_signal(sig)
            proc.wait(timeout=RUN_TIMEOUT)
            stats["killed"] += 1
        proc.stderr.close()
        with warnings.catch_warnings():  # a line cut short is repaired with a warning: that is expected
            warnings.simplefilter("ignore")
            if (log_dir / WORKLOADS).is_file():
                read_database(log_dir)  # parses (TVM's own JSONDatabase, after repair on a copy)
        now = _complete_records(log_dir)
        assert held <= now, f"run {i}: {len(held - now)} record(s) lost after {sig.name}"
        held = now
        if sig is signal.SIGTERM:
            assert not [n for n in _ours(tmp_root) if f"-{proc.pid}-" in n], "a SIGTERMed tune left its temp folders"
    final = _tune(model, calib, log_dir, trials, env)
    _, err = final.communicate(timeout=RUN_TIMEOUT)
    assert final.returncode == 0, err[-2000:]
    assert held <= _complete_records(log_dir)
    assert _ours(tmp_root) == [], "temp folders left after a clean run"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired for good: no bad line left
        read_database(log_dir)
    stats["records"] = len(held)
    return stats


def test_tune_killed_twice_loses_nothing(tmp_path):
    stats = _kill_loop(tmp_path, kills=2, window=(20.0, 60.0), seed=1)
    assert stats["records"] > 0


@pytest.mark.slow
def test_tune_killed_20_times_loses_nothing(tmp_path):
    stats = _kill_loop(tmp_path, kills=20, window=(5.0, 90.0), seed=20)
    print(stats)
    assert stats["killed"] >= 10 and stats["records"] > 0
