"""Checks on the built-in digits model: shipped weights, fixed data split, exportability."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tvmquant.models.digits import (
    INPUT_SHAPE,
    SPLIT_NAMES,
    WEIGHTS_PATH,
    load_model,
    load_split,
    split_indices,
)


def test_shipped_weights_reach_95_percent_on_test_split() -> None:
    images, labels = load_split("test")
    with torch.no_grad():
        predictions = load_model()(torch.from_numpy(images)).argmax(1).numpy()
    assert (predictions == labels).mean() >= 0.95


def test_shipped_weights_are_small() -> None:
    assert WEIGHTS_PATH.stat().st_size < 300 * 1024


@pytest.mark.parametrize(("name", "size"), [("train", 1237), ("calib", 200), ("test", 360)])
def test_split_sizes_dtypes_and_range(name: str, size: int) -> None:
    images, labels = load_split(name)
    assert images.shape == (size, *INPUT_SHAPE[1:])
    assert images.dtype == np.float32 and labels.dtype == np.int64
    assert images.min() == -1.0 and images.max() == 1.0
    assert set(labels.tolist()) == set(range(10))


def test_splits_are_disjoint_and_cover_the_dataset() -> None:
    indices = [split_indices(name) for name in SPLIT_NAMES]
    combined = np.concatenate(indices)
    assert len(np.unique(combined)) == len(combined) == 1797


@pytest.mark.parametrize("name", SPLIT_NAMES)
def test_splits_are_deterministic(name: str) -> None:
    first_images, first_labels = load_split(name)
    second_images, second_labels = load_split(name)
    assert first_images is not second_images
    np.testing.assert_array_equal(first_images, second_images)
    np.testing.assert_array_equal(first_labels, second_labels)


def test_split_is_identical_in_a_fresh_interpreter() -> None:
    """The split must not depend on process state, or 'test' would leak into training."""
    script = (
        "from tvmquant.models.digits import SPLIT_NAMES, split_indices;"
        "print([split_indices(n).tolist() for n in SPLIT_NAMES])"
    )
    output = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    ).stdout
    assert output.strip() == str([split_indices(n).tolist() for n in SPLIT_NAMES])


def test_unknown_split_is_rejected_with_valid_names() -> None:
    with pytest.raises(ValueError, match="train, calib, test"):
        load_split("validation")


def test_model_exports_and_matches_eager() -> None:
    model = load_model()
    image = torch.from_numpy(load_split("calib")[0][:1])
    exported = torch.export.export(model, (torch.zeros(INPUT_SHAPE),))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(image), model(image))
