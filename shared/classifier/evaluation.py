"""Evaluate a loaded classifier on labelled images through the shared inference path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from shared.classifier.artifact import Manifest
from shared.classifier.dataset import LabelledImage, stratified_split
from shared.classifier.inference import predict_stream
from shared.classifier.metrics import classification_report
from shared.classifier.model import Classifier
from shared.errors import InvalidInput


def select_holdout(images: list[LabelledImage], manifest: Manifest | None) -> list[LabelledImage]:
    """The validation split a model was trained with, reproduced from its manifest's seed."""
    training = manifest.training if manifest else {}
    if "seed" not in training or "validation_fraction" not in training:
        raise InvalidInput("--holdout needs a model artifact whose manifest records its split")
    _, validation = stratified_split(
        [image.label for image in images], training["validation_fraction"], training["seed"]
    )
    return [images[i] for i in validation]


def evaluate_images(
    images: list[LabelledImage],
    classifier: Classifier,
    *,
    batch_size: int = 16,
    max_pixels: int = 40_000_000,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
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
