"""Out-of-fold predictions find the labels that disagree with the data, and only those."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from shared.training.noisy_labels import contact_sheet, find_suspects, out_of_fold_probabilities


def _clusters(per_class: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Six well-separated clusters of 32-dimensional features, one per class."""
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 4, size=(6, 32))
    labels = np.repeat(np.arange(6), per_class)
    return centres[labels] + rng.normal(0, 1, size=(len(labels), 32)), labels


def test_flipped_labels_are_found_and_clean_ones_left_alone() -> None:
    features, truth = _clusters()
    given = truth.copy()
    flipped = np.array([3, 70, 130, 200, 250, 333])
    given[flipped] = (truth[flipped] + 1) % 6  # mislabelled as the next class
    probabilities = out_of_fold_probabilities(features, given, folds=5)
    suspects = find_suspects(probabilities, given, confidence=0.9)
    assert sorted(suspects.positions.tolist()) == flipped.tolist()
    assert (suspects.predicted == truth[suspects.positions]).all()  # what the photo shows
    assert suspects.out_of_fold_accuracy == 1 - len(flipped) / len(given)
    assert sum(suspects.pairs(given).values()) == len(flipped)


def test_a_prediction_below_the_confidence_is_not_a_suspect() -> None:
    probabilities = np.array([[0.5, 0.4, 0.1, 0, 0, 0], [0.05, 0.95, 0, 0, 0, 0]])
    suspects = find_suspects(probabilities, np.array([1, 0]), confidence=0.9)
    assert suspects.positions.tolist() == [1]


def test_the_contact_sheet_holds_one_captioned_cell_per_image(tmp_path: Path) -> None:
    paths = []
    for index in range(10):
        path = tmp_path / f"{index}.jpg"
        Image.new("RGB", (150, 150), (index * 20, 90, 160)).save(path)
        paths.append(path)
    output = tmp_path / "sheet.png"
    contact_sheet(paths, [2] * 10, [3] * 10, [0.97] * 10, output, columns=4)
    with Image.open(output) as stored:
        sheet = stored.convert("RGB")
    assert sheet.size == (4 * 120, 3 * (120 + 26))  # 10 images in rows of 4
    first = np.asarray(sheet.getpixel((60, 60)), dtype=int)
    assert np.abs(first - (0, 90, 160)).max() <= 8  # the first photo, in its cell (palette)
    assert sheet.getpixel((4 * 120 - 60, 2 * 146 + 60)) == (255, 255, 255)  # an empty cell
