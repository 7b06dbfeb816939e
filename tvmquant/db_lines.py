"""One line of TVM's JSON database, checked field by field so that a rejected line is reported with what is
wrong with it ("the record has 3 fields; expected 4 ...") rather than TVM's internal check
(`Check failed: (arr && arr->size() == 4)`)."""

from __future__ import annotations

import json
from numbers import Real

from tvm.s_tir import meta_schedule as ms


class BadLine(ValueError):
    """A database line that cannot be used; the message says why, in words."""


def _json(line: str):
    try:
        return json.loads(line)
    except ValueError:
        raise BadLine("not valid JSON (a line cut short, e.g. by a killed tune?)") from None


def parse_workload(line: str) -> ms.database.Workload:
    data = _json(line)
    if not (isinstance(data, list) and len(data) == 2 and all(isinstance(x, str) for x in data)):
        raise BadLine("expected [structural hash, encoded module]")
    try:
        return ms.database.Workload.from_json(data)
    except Exception:
        raise BadLine("TVM cannot decode its module (damaged, or written by another TVM version)") from None


def parse_record(line: str, workloads: list[ms.database.Workload | None]) -> tuple[int, list]:
    """(workload index, record) of a tuning-record line whose workload is `workloads[index]`."""
    data = _json(line)
    if not (isinstance(data, list) and len(data) == 2 and type(data[0]) is int and isinstance(data[1], list)):
        raise BadLine("expected [workload index, record]")
    index, record = data
    if not 0 <= index < len(workloads) or workloads[index] is None:
        raise BadLine(f"refers to workload {index}, which is missing or was dropped")
    if len(record) != 4:
        raise BadLine(f"the record has {len(record)} field(s); expected 4 (trace, run times, target, argument info)")
    trace, run_secs, target, args_info = record
    if not (isinstance(trace, list) and len(trace) == 2 and all(isinstance(part, list) for part in trace)):
        raise BadLine("its schedule trace is not [instructions, decisions]")
    if run_secs is not None and not (isinstance(run_secs, list) and all(isinstance(s, Real) for s in run_secs)):
        raise BadLine("its run times are not a list of numbers")
    if not isinstance(target, dict):
        raise BadLine("its target is not a JSON object")
    if not isinstance(args_info, list):
        raise BadLine("its argument info is not a list")
    try:
        ms.database.TuningRecord.from_json(record, workloads[index])
    except Exception:
        raise BadLine("TVM cannot rebuild it (an unknown schedule instruction or target, or another TVM version)") from None
    return index, record
