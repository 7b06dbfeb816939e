"""File operations for folders other people may write too (a shared `--log-dir`): never through a symbolic
link, temporary files created exclusively inside the folder itself, replacements atomic.

A planted `.lock -> victim` or `tasks.json -> victim` would otherwise make `tune` truncate or overwrite the
victim with the permissions of whoever runs it.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from .errors import UserError

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def refuse_symlink(path: Path) -> None:
    """UserError if `path` is a symbolic link (or anything but a regular file, when it exists)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise UserError(f"{path} is a symbolic link; tuning-log files must be regular files (remove the link)")
    if not stat.S_ISREG(mode):
        raise UserError(f"{path} is not a regular file")


def open_fd(path: Path, flags: int, mode: int = 0o644) -> int:
    """os.open without following a final symbolic link; one-line error if it is one."""
    refuse_symlink(path)
    try:
        fd = os.open(path, flags | _NOFOLLOW, mode)
    except OSError as exc:
        raise UserError(f"cannot open {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{path} is not a regular file")
    return fd


def read_text(path: Path) -> str | None:
    """The file's text, or None if it does not exist."""
    if not os.path.lexists(path):
        return None
    with os.fdopen(open_fd(path, os.O_RDONLY), encoding="utf-8", errors="replace") as handle:
        return handle.read()


def append_lines(path: Path, lines: list[str]) -> None:
    with os.fdopen(open_fd(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a", encoding="utf-8") as handle:
        handle.writelines(f"{line}\n" for line in lines)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` as a whole with `text`: a fresh file from mkstemp in the same folder (O_EXCL, so never a
    planted link), flushed to disk, then renamed over `path` (a rename replaces a link, never its target)."""
    refuse_symlink(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(name, path)
    except BaseException:
        try:
            os.unlink(name)
        except OSError:
            pass  # the error that brought us here is the one to report
        raise


def make_dir(path: Path) -> None:
    """mkdir -p, with a one-line error when something in the way is a file or cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot use {path} as a folder: {exc.strerror}") from None
