"""Where the shipped data lives: `targets/` and `tuning_logs/` are top-level folders of the repository (their
source), copied into the package as `tvmquant/_shipped/` when it is built (setup.py), so that a plain
`pip install .` finds them too. `tune` never writes there: its records go to a user folder."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    """The installed copy of a shipped folder if there is one, else the source checkout's."""
    installed = _PACKAGE / "_shipped" / name
    return installed if installed.is_dir() else _PACKAGE.parent / name


def user_tuning_dir(target_name: str) -> Path:
    """Where `tune` writes by default: $XDG_CACHE_HOME/tvmquant/tuning_logs/TARGET (~/.cache if unset)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "tvmquant" / "tuning_logs" / target_name


def shipped_tuning_dir(target_name: str) -> Path:
    """The records shipped with tvmquant for a target (read-only for users)."""
    return shipped_dir("tuning_logs") / target_name
