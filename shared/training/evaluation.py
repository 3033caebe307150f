"""Evaluate a loaded classifier on labelled images through the shared inference path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from shared.classifier.artifact import FineTunedManifest, Manifest
from shared.classifier.inference import predict_stream
from shared.classifier.loaded import Classifier
from shared.errors import InvalidInput
from shared.training.dataset import (
    LabelledImage,
    split_images,
    stratified_split,
)
from shared.training.metrics import classification_report

# How a long step reports progress: given a description and a total, a function that
# advances by n (the CLI's bar; None: silent).
ProgressFactory = Callable[[str, int], Callable[[int], None]]

# How much accuracy an INT8 form may lose against fp32 on the test split and still ship.
MAX_ACCURACY_DROP = 0.005  # half a point


def select_holdout(
    images: list[LabelledImage], manifest: Manifest | FineTunedManifest | None
) -> list[LabelledImage]:
    """The images a model never trained on, reproduced from its manifest's seed.

    For model v2 that is the test split (after dropping duplicates); for v1 the
    validation split.
    """
    if isinstance(manifest, FineTunedManifest):
        return _test_split(images, manifest)
    training = manifest.training if manifest else {}
    if "seed" not in training or "validation_fraction" not in training:
        raise InvalidInput("--holdout needs a model artifact whose manifest records its split")
    _, validation = stratified_split(
        [image.label for image in images], training["validation_fraction"], training["seed"]
    )
    return [images[i] for i in validation]


def _test_split(images: list[LabelledImage], manifest: FineTunedManifest) -> list[LabelledImage]:
    training = manifest.training
    split = split_images(
        images, training["validation_fraction"], training["test_fraction"], training["seed"]
    )
    return [split.images[i] for i in split.test]


def evaluate_images(
    images: list[LabelledImage],
    classifier: Classifier,
    *,
    batch_size: int = 16,
    max_pixels: int = 40_000_000,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    advance = progress("evaluating", len(images)) if progress else None
    y_true: list[int] = []
    y_pred: list[int] = []
    unreadable: list[str] = []
    items = ((image.name, image.path.read_bytes()) for image in images)
    predictions = predict_stream(classifier, items, batch_size=batch_size, max_pixels=max_pixels)
    for image, prediction in zip(images, predictions, strict=True):
        if advance:
            advance(1)
        if prediction.label is None:
            unreadable.append(prediction.name)
            continue
        y_true.append(image.label)
        y_pred.append(classifier.classes.index(prediction.label))
    report = classification_report(np.asarray(y_true), np.asarray(y_pred), classifier.classes)
    report["unreadable"] = unreadable
    report["model_version"] = classifier.version
    return report
