"""Training labels a confident out-of-fold prediction disagrees with.

A multinomial logistic regression (numpy) on the frozen base's pooled
features is trained on k-1 folds of the training split and predicts the k-th, so every
image is judged by a model that never saw it. An image is flagged when that
prediction names another class with at least `confidence`. The data's known
noise (glacier/mountain, buildings/street) is where such images gather.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.classifier.labels import CLASSES
from shared.classifier.loaded import softmax


@dataclass(frozen=True)
class Suspects:
    positions: np.ndarray  # into the arrays given to `find_suspects`
    predicted: np.ndarray
    confidence: np.ndarray
    out_of_fold_accuracy: float

    def pairs(self, labels: np.ndarray) -> dict[str, int]:
        counted: dict[str, int] = {}
        for given, said in zip(labels[self.positions], self.predicted, strict=True):
            key = f"{CLASSES[given]}→{CLASSES[said]}"
            counted[key] = counted.get(key, 0) + 1
        return dict(sorted(counted.items(), key=lambda kv: -kv[1]))


def out_of_fold_probabilities(
    features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 42
) -> np.ndarray:
    """Each image's class probabilities from a model fitted on the other folds."""
    fold_of = _stratified_folds(labels, folds, seed)
    probabilities = np.zeros((len(labels), len(CLASSES)), np.float32)
    for fold in range(folds):
        judged = fold_of == fold
        mean = features[~judged].mean(axis=0)
        scale = features[~judged].std(axis=0) + 1e-6
        weights = _fitsoftmax((features[~judged] - mean) / scale, labels[~judged])
        probabilities[judged] = softmax(_with_bias((features[judged] - mean) / scale) @ weights)
    return probabilities


def _stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fold_of = np.zeros(len(labels), np.int64)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        fold_of[members] = np.arange(len(members)) % folds
    return fold_of


def _fitsoftmax(
    x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 300, rate: float = 0.5
) -> np.ndarray:
    """Multinomial logistic regression, L2-penalised, by full-batch gradient descent."""
    x = _with_bias(x)
    targets = np.eye(len(CLASSES), dtype=np.float32)[y]
    weights = np.zeros((x.shape[1], len(CLASSES)), np.float32)
    velocity = np.zeros_like(weights)
    for _ in range(steps):
        gradient = x.T @ (softmax(x @ weights) - targets) / len(x) + l2 * weights
        velocity = 0.9 * velocity - rate * gradient
        weights += velocity
    return weights


def _with_bias(x: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.ones((len(x), 1), x.dtype)]).astype(np.float32)


def find_suspects(probabilities: np.ndarray, labels: np.ndarray, confidence: float) -> Suspects:
    predicted = probabilities.argmax(axis=1)
    top = probabilities.max(axis=1)
    flagged = np.flatnonzero((predicted != labels) & (top >= confidence))
    return Suspects(
        positions=flagged,
        predicted=predicted[flagged],
        confidence=top[flagged],
        out_of_fold_accuracy=float((predicted == labels).mean()),
    )


def contact_sheet(
    paths: list[Path],
    given: list[int],
    said: list[int],
    confidence: list[float],
    output: Path,
    columns: int = 8,
) -> None:
    """A grid of thumbnails, each captioned with its label and the prediction that doubts it."""
    from PIL import Image, ImageDraw

    cell, caption = 120, 26
    rows = max(1, -(-len(paths) // columns))
    sheet = Image.new("RGB", (columns * cell, rows * (cell + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for index, path in enumerate(paths):
        x, y = (index % columns) * cell, (index // columns) * (cell + caption)
        with Image.open(path) as image:
            thumbnail = image.convert("RGB")
            thumbnail.thumbnail((cell - 4, cell - 4))
        sheet.paste(thumbnail, (x + 2, y + 2))
        draw.text((x + 3, y + cell), f"label {CLASSES[given[index]]}", fill="black")
        verdict = f"seen {CLASSES[said[index]]} {confidence[index]:.2f}"
        draw.text((x + 3, y + cell + 12), verdict, fill="firebrick")
    sheet.quantize(256).save(output, optimize=True)  # a palette: a quarter of the bytes
