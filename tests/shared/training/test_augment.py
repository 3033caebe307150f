from __future__ import annotations

import numpy as np
from PIL import Image

from shared.training.augment import Augmentation


def _gradient() -> Image.Image:
    row = np.linspace(0, 255, 64, dtype=np.uint8)
    return Image.fromarray(np.tile(row, (64, 1))).convert("RGB")


def test_same_seed_same_view_different_seed_different_view() -> None:
    augmentation = Augmentation()
    first = augmentation.apply(_gradient(), np.random.default_rng(3))
    again = augmentation.apply(_gradient(), np.random.default_rng(3))
    other = augmentation.apply(_gradient(), np.random.default_rng(4))
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()
    assert first.size == (64, 64)


def test_flip_only_mirrors_the_image() -> None:
    flip_only = Augmentation(zoom=0.0, shear_degrees=0.0, flip=True)
    outcomes = {
        np.asarray(flip_only.apply(_gradient(), np.random.default_rng(seed)))[32, 0, 0]
        for seed in range(10)
    }
    assert outcomes == {0, 255}  # left edge is either the dark or, mirrored, the bright end


def test_zoom_enlarges_the_centre() -> None:
    zoom_in = Augmentation(zoom=0.5, shear_degrees=0.0, flip=False)
    rng = np.random.default_rng(0)
    image = np.asarray(zoom_in.apply(_gradient(), rng))[32, :, 0].astype(int)
    original = np.asarray(_gradient())[32, :, 0].astype(int)
    assert not np.array_equal(image, original)
