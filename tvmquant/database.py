"""The tuning log folder: TVM's own JSON database (`database_workload.json` + `database_tuning_record.json`),
checked line by line before TVM reads it, and locked while a `tune` process writes it.

TVM's JSONDatabase refuses a whole file for one bad line (a `tune` killed mid-write leaves a truncated one), so
bad lines are moved aside with a warning naming file and line, and every other record is kept. Records point
to workloads by line number, so dropping a workload line renumbers the records after it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from . import safe_fs, tempdirs
from .db_lines import BadLine, parse_record, parse_workload
from .errors import UserError

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
LOCK = ".lock"
TASKS = "tasks.json"  # per task: untuned latency (ms), and whether its search space ran out


@contextmanager
def locked(log_dir: Path, timeout: float | None = None) -> Iterator[None]:
    """Exclusive lock on a log folder for the whole of one `tune` run, so two runs never interleave lines.

    A second run waits (saying so), then continues from the first one's records. The lock file is never
    followed if it is a link, and names the holder's pid: a pid that is no longer running (a `tune` killed with
    SIGKILL) is reported and its lock taken over; the kernel released the flock itself when it died.
    """
    safe_fs.make_dir(log_dir)
    with os.fdopen(safe_fs.open_fd(log_dir / LOCK, os.O_RDWR | os.O_CREAT), "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle.read()) or "another process"
            print(f"waiting for {holder} to finish with {log_dir}", file=sys.stderr, flush=True)
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() > deadline:
                        raise UserError(f"{log_dir} is locked by {holder} (waited {timeout:.0f} s)") from None
                    time.sleep(0.5)
        handle.seek(0)
        stale = _holder(handle.read())
        if stale and "not running" in stale:
            print(f"{log_dir}: taking over the lock left by {stale}", file=sys.stderr, flush=True)
        handle.seek(0)
        handle.truncate()
        handle.write(f"tvmquant tune (pid {os.getpid()})\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _holder(text: str) -> str | None:
    """Who the lock file names, and whether that pid still runs."""
    match = re.search(r"pid (\d+)", text)
    if match is None:
        return text.strip()[:80] or None
    pid = int(match.group(1))
    return f"tvmquant tune (pid {pid})" if tempdirs.pid_alive(pid) else f"tvmquant tune (pid {pid}, not running)"


def _lines(path: Path) -> list[str]:
    return (safe_fs.read_text(path) or "").splitlines()


def repair(log_dir: Path, shown_as: Path | None = None) -> list[str]:
    """Drop lines TVM cannot parse (moved to `<file>.rejected`); returns one warning per dropped line, naming
    the files as under `shown_as` (for a copy). Only under the folder's lock, or on a private copy."""
    wl_path, rec_path = log_dir / WORKLOADS, log_dir / RECORDS
    shown = shown_as or log_dir
    problems: list[str] = []
    rejected: dict[Path, list[str]] = {wl_path: [], rec_path: []}
    workloads: list[ms.database.Workload | None] = []
    kept_workloads: list[str] = []
    new_index: dict[int, int] = {}
    for number, line in enumerate(_lines(wl_path), start=1):
        try:
            workloads.append(parse_workload(line))
        except BadLine as exc:
            workloads.append(None)
            problems.append(f"{shown / WORKLOADS}:{number}: unreadable workload dropped: {exc}")
            rejected[wl_path].append(line)
            continue
        new_index[number - 1] = len(kept_workloads)
        kept_workloads.append(line)
    kept_records: list[str] = []
    for number, line in enumerate(_lines(rec_path), start=1):
        try:
            index, record = parse_record(line, workloads)
        except BadLine as exc:
            problems.append(f"{shown / RECORDS}:{number}: unreadable tuning record dropped: {exc}")
            rejected[rec_path].append(line)
            continue
        kept_records.append(json.dumps([new_index[index], record], separators=(",", ":")) if index != new_index[index] else line)
    if problems:
        for path, lines in rejected.items():
            if lines:
                safe_fs.append_lines(path.with_name(path.name + ".rejected"), lines)
        _write_atomic(wl_path, kept_workloads)
        _write_atomic(rec_path, kept_records)
    return problems


def _write_atomic(path: Path, lines: list[str]) -> None:
    safe_fs.write_atomic(path, "".join(f"{line}\n" for line in lines))


def open_database(log_dir: Path) -> ms.database.JSONDatabase:
    """The folder's JSONDatabase for writing, after `repair` in place; the caller holds `locked(log_dir)`."""
    safe_fs.make_dir(log_dir)
    for problem in repair(log_dir):
        warnings.warn(problem, stacklevel=2)
    _refuse_links(log_dir)  # TVM appends to these by name
    return _json_database(log_dir)


def _refuse_links(log_dir: Path) -> None:
    for name in (WORKLOADS, RECORDS, TASKS, LOCK, f"{WORKLOADS}.rejected", f"{RECORDS}.rejected"):
        safe_fs.refuse_symlink(log_dir / name)


def read_database(log_dir: Path) -> ms.database.JSONDatabase:
    """The folder's records for reading (compile): repaired on a private copy, so the folder is never changed
    and a `tune` writing it meanwhile is not disturbed."""
    _refuse_links(log_dir)
    if not (log_dir / WORKLOADS).is_file():
        raise UserError(f"no tuning records in {log_dir} (expected {WORKLOADS} and {RECORDS})")
    tempdirs.clean_stale()
    with tempdirs.private_dir("db") as copy:
        for name in (WORKLOADS, RECORDS):
            text = safe_fs.read_text(log_dir / name)
            if text is not None:
                (copy / name).write_text(text)
        for problem in repair(copy, shown_as=log_dir):
            warnings.warn(problem, stacklevel=2)
        return _json_database(copy)  # JSONDatabase reads everything at construction


def read_databases(log_dirs: list[Path]) -> ms.database.Database:
    """Several folders' records as one database: each query answers with the best record among them."""
    databases = [read_database(d) for d in log_dirs]
    return databases[0] if len(databases) == 1 else ms.database.UnionDatabase(*databases)


def _json_database(log_dir: Path) -> ms.database.JSONDatabase:
    return ms.database.JSONDatabase(
        path_workload=str(log_dir / WORKLOADS), path_tuning_record=str(log_dir / RECORDS),
        allow_missing=True, module_equality="structural",
    )


def has_records(log_dir: Path) -> bool:
    return (log_dir / RECORDS).is_file() and (log_dir / RECORDS).stat().st_size > 0


def task_key(name: str, mod: tvm.IRModule) -> str:
    """How tasks.json names a task: its function name and the structural hash TVM matches records by."""
    return f"{name}:{tvm_ffi.structural_hash(mod) & 0xFFFFFFFFFFFF:x}"


def load_task_state(log_dir: Path) -> dict[str, dict]:
    path = log_dir / TASKS
    try:
        data = json.loads(safe_fs.read_text(path) or "{}")
        return {k: dict(v) for k, v in data.items()}
    except (ValueError, TypeError, AttributeError):
        warnings.warn(f"{path} is unreadable; untuned latencies will be measured again", stacklevel=2)
        return {}


def save_task_state(log_dir: Path, state: dict[str, dict]) -> None:
    safe_fs.write_atomic(log_dir / TASKS, json.dumps(state, indent=1, sort_keys=True) + "\n")
