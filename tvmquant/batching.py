"""Feeding N samples to a graph exported for a fixed batch size."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .console import progress as progress_bar


def fixed_batches(data: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Yield (batch, valid) pairs; the last batch is padded by repeating its first sample."""
    for start in range(0, len(data), batch_size):
        chunk = data[start : start + batch_size]
        valid = len(chunk)
        if valid < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - valid, axis=0)])
        yield np.ascontiguousarray(chunk), valid


def run_batched(fn, data: np.ndarray, batch_size: int, progress: str | None = None) -> np.ndarray:
    """Apply a fixed-batch function to all of `data` and drop the padding; a progress bar if `progress`."""
    batches = progress_bar(
        fixed_batches(data, batch_size), total=-(-len(data) // batch_size), desc=progress,
        unit="batch", leave=False, disable=progress is None,
    )
    return np.concatenate([fn(chunk)[:valid] for chunk, valid in batches])
