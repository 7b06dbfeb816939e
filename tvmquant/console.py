"""What reaches the terminal: progress bars only when stderr is one (a CI log or a pipe gets no carriage-return
noise), and MetaSchedule's INFO tables in a log file instead of on stdout."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MS_LOGGER = "tvm.s_tir.meta_schedule"


def progress(iterable: Any = None, **kwargs: Any):
    """A tqdm bar on stderr, shown only on a terminal (a caller's `disable=True` still wins)."""
    from tqdm import tqdm

    kwargs["disable"] = kwargs.get("disable", False) or not sys.stderr.isatty()
    return tqdm(iterable, file=sys.stderr, **kwargs)


def quiet_metaschedule_console() -> None:
    """Call before MetaSchedule makes tune contexts: it re-creates its console handler (on stdout) at the
    level its logger has then, and leaves the logger at DEBUG afterwards, so this is needed every time."""
    logging.getLogger(MS_LOGGER).setLevel(logging.WARNING)


@contextmanager
def metaschedule_log(path: Path) -> Iterator[None]:
    """Around a tuning call: MetaSchedule's log records go to `path` (appended); on the console only its
    warnings, and on stderr."""
    logger = logging.getLogger(MS_LOGGER)
    path.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(path, mode="a")
    file_handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s"))
    quieted = [(h, h.level) for h in logger.handlers
               if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    for handler, _ in quieted:
        handler.setLevel(logging.WARNING)
        if getattr(handler, "stream", None) is sys.stdout:
            handler.setStream(sys.stderr)
    logger.addHandler(file_handler)
    try:
        yield
    finally:
        logger.removeHandler(file_handler)
        file_handler.close()
        for handler, level in quieted:
            handler.setLevel(level)
