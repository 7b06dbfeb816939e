"""Real photos for the EfficientNet-Lite0 bench: many 224x224 crops, flips and scales per photo, split by photo
(not by crop) so that no scored photo is ever calibrated or trained on."""

from __future__ import annotations

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)
# real RGB photos only: `horse` is a binary silhouette, `cat` is `chelsea` again, `logo`/`colorwheel` are drawn
SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


def load_photos() -> dict[str, np.ndarray]:
    """Every real RGB photo shipped by scikit-image and scikit-learn, as float [0, 1] HxWx3."""
    from skimage import data
    from sklearn.datasets import load_sample_image

    out = {}
    for name in SKIMAGE_PHOTOS:
        if hasattr(data, name):
            image = np.asarray(getattr(data, name)())
            if image.ndim == 3 and image.shape[2] >= 3:
                out[name] = image[..., :3]
    for name in SKLEARN_PHOTOS:
        out[name] = load_sample_image(name)
    return {k: (v.astype(np.float32) / 255.0 if v.dtype == np.uint8 else v.astype(np.float32)) for k, v in out.items()}


def crops(image: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` ImageNet-normalized 224x224 views: a random square of 45-100 % of the short side, resized, half
    of them mirrored."""
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    height, width = image.shape[:2]
    out = []
    for _ in range(count):
        side = int(min(height, width) * rng.uniform(0.45, 1.0))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        view = resize(image[top:top + side, left:left + side], (224, 224), anti_aliasing=True)
        if rng.random() < 0.5:
            view = view[:, ::-1]
        out.append((view.transpose(2, 0, 1).astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD)
    return np.stack(out)


def split_photos(names: list[str], scored: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(calibration/training photos, scored photos): disjoint, every photo in exactly one."""
    if not 0 < scored < len(names):
        raise ValueError(f"need 0 < scored < {len(names)} photos, got {scored}")
    order = list(np.random.default_rng(seed).permutation(sorted(names)))
    return sorted(order[scored:]), sorted(order[:scored])


def photo_sets(per_photo: int, scored: int, seed: int = 0) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """Calibration photos and their crops, scored photos and their crops."""
    photos = load_photos()
    fit, score = split_photos(list(photos), scored, seed)

    def views(names: list[str]) -> np.ndarray:
        return np.concatenate([crops(photos[n], per_photo, seed + i) for i, n in enumerate(sorted(photos)) if n in names])

    return fit, views(fit), score, views(score)
