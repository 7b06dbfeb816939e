"""tvmquant's folders in the system temp dir, named `tvmquant-KIND-PID-xxxx` after the process they serve, so
that the next run can tell which ones a killed run left behind and remove them.

A `tune` ended by SIGTERM or SIGHUP removes its folders before it exits; one killed by SIGKILL cannot, and
its folders go at the next `tune` or `compile`. MetaSchedule's builder workers name their
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
    return _remove_matching(lambda pid: not pid_alive(pid), root)


def _remove_matching(select, root: Path | None = None) -> list[Path]:
    root = Path(root or tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        match = _NAME.match(entry.name)
        if match is None or not select(int(match.group(1))):
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
    """Remove this process's temp folders and exit at once. Raising instead would cross TVM's C++ frames
    (MetaSchedule calls back into Python), which turn it into a RuntimeError or abort; records need no
    clean-up (a line cut short is repaired by the next run) and the kernel releases the folder's flock."""
    mine = os.getpid()
    _remove_matching(lambda pid: pid == mine)
    os.write(2, f"\ntvmquant: terminated by {signal.Signals(signum).name}; the records written so far are kept\n".encode())
    os._exit(128 + signum)


@contextmanager
def exit_cleanly_on_termination() -> Iterator[None]:
    """For the duration, SIGTERM / SIGHUP remove this process's temp folders and exit (see _exit_on_signal)."""
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
