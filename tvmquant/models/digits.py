"""Default model for ``tvmquant compile``: a small CNN on scikit-learn's 8x8 digits.

It exists so the compiler can be exercised end to end on real data (not random
weights) with no download: ``sklearn.datasets.load_digits`` ships with
scikit-learn. The weights in ``digits_cnn.pt`` are produced by
``scripts/train_digits_model.py``; the fixed train/calib/test split below is
shared by training, quantization calibration and accuracy checks.
"""

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

WEIGHTS_PATH = Path(__file__).with_name("digits_cnn.pt")
INPUT_SHAPE = (1, 1, 8, 8)
SPLIT_NAMES = ("train", "calib", "test")

_TEST_SIZE = 360
_CALIB_SIZE = 200
_SEED = 0


class DigitsCNN(nn.Module):
    """Conv/BN/ReLU stack then two linear layers; covers the ops the quantizer must handle."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc1 = nn.Linear(512, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.conv3(x))
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


def load_model() -> DigitsCNN:
    """Return the trained model in eval mode, ready for export."""
    model = DigitsCNN()
    model.load_state_dict(torch.load(WEIGHTS_PATH, weights_only=True))
    return model.eval()


@lru_cache(maxsize=1)
def _split_table() -> dict[str, np.ndarray]:
    """Stratified, seeded split so every caller sees the same images per split."""
    labels = load_digits().target
    rest, test = train_test_split(
        np.arange(len(labels)), test_size=_TEST_SIZE, stratify=labels, random_state=_SEED
    )
    train, calib = train_test_split(
        rest, test_size=_CALIB_SIZE, stratify=labels[rest], random_state=_SEED
    )
    table = {"train": train, "calib": calib, "test": test}
    for indices in table.values():
        indices.setflags(write=False)
    return table


def split_indices(name: str) -> np.ndarray:
    """Indices into ``load_digits()`` for a split; exposed so disjointness is checkable."""
    if name not in SPLIT_NAMES:
        raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLIT_NAMES)}")
    return _split_table()[name]


def load_split(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, 8, 8) float32 scaled to [-1, 1] and int64 labels for a split."""
    indices = split_indices(name)
    digits = load_digits()
    images = digits.images[indices].astype(np.float32)[:, None]
    images = (images / 16.0 - 0.5) / 0.5
    return images, digits.target[indices].astype(np.int64)
