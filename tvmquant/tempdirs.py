"""tvmquant's folders in the system temp dir, named `tvmquant-KIND-PID-xxxx` after the process they serve, so
that the next run can tell which ones a killed run left behind and remove them.

A `tune` ended by SIGTERM or SIGHUP exits through its `finally` blocks (and removes its folders); one killed by
SIGKILL cannot, and its folders go at the next `tune` or `compile`. MetaSchedule's builder workers name their
`tvmquant-ms-*` folders after the `tune` process that started them (see _ms_workers.export_so).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

KINDS = ("tune", "ms", "db")
_NAME = re.compile(r"tvmquant-(?:%s)-(\d+)-" % "|".join(KINDS))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def clean_stale(root: Path | None = None) -> list[Path]:
    """Remove our temp folders whose process is gone; only real folders owned by this user, never via links."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        match = _NAME.match(entry.name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid():
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


@contextmanager
def private_dir(kind: str) -> Iterator[Path]:
    """A fresh temp folder named for this process, removed when the block ends."""
    path = Path(tempfile.mkdtemp(prefix=f"tvmquant-{kind}-{os.getpid()}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _exit_on_signal(signum, _frame):
    raise SystemExit(128 + signum)


@contextmanager
def exit_cleanly_on_termination() -> Iterator[None]:
    """SIGTERM / SIGHUP raise SystemExit for the duration, so `finally` blocks (locks, temp folders) run."""
    signals = [signal.SIGTERM, signal.SIGHUP]
    try:
        previous = [signal.signal(s, _exit_on_signal) for s in signals]
    except ValueError:  # not the main thread: leave the handlers alone
        yield
        return
    try:
        yield
    finally:
        for s, handler in zip(signals, previous):
            signal.signal(s, handler)
