"""A loaded model: its engine, classes and version, and its calibrated probabilities."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from shared.classifier import artifact
from shared.classifier.engine import Engine
from shared.classifier.runner import Pending, Rows, ThroughputRunner
from shared.errors import ModelError

Precision = Literal["auto", "fp32", "int8"]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities for rows of logits divided by `temperature` (float64)."""
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    probabilities: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return probabilities


@dataclass
class Classifier:
    """A loaded model ready for batches of preprocessed images."""

    network: Any | None  # the composed Keras model (image -> logits); None when serving IR
    engine: Engine
    classes: tuple[str, ...]
    input_size: int
    version: str  # identifies weights and precision: results are reused only within it
    manifest: artifact.Manifest | artifact.FineTunedManifest | None = None
    temperature: float = 1.0  # logits are divided by it: calibrated confidence
    precision: str = "fp32"
    engine_name: str = "openvino"

    @property
    def can_start(self) -> bool:
        """Whether batches can be started without waiting (`start`)."""
        return isinstance(self.engine, ThroughputRunner)

    def start(self, images: Rows, urgent: bool = False) -> Pending:
        """Queue preprocessed images; their logits come as they finish (`probabilities`)."""
        if not isinstance(self.engine, ThroughputRunner):
            raise ModelError("this engine runs one batch at a time; call predict")
        return self.engine.start(images, urgent)

    def seconds_per_image(self) -> float | None:
        """The engine's recent time per image while busy; None when not yet known."""
        if not isinstance(self.engine, ThroughputRunner):
            return None
        return self.engine.seconds_per_row()

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities for rows of logits."""
        return softmax(logits.astype(np.float64) / self.temperature).astype(np.float32)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, classes), for preprocessed images (n, size, size, 3)."""
        if len(batch) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        logits = self.engine(batch).astype(np.float64) / self.temperature
        return softmax(logits).astype(np.float32)

    def save_keras(self, path: Path) -> None:
        """A complete single-file model (base included) that `load_classifier` accepts."""
        if path.suffix != ".keras":
            raise ModelError(f"a complete model file must end in .keras, not {path.name!r}")
        if self.network is None:
            raise ModelError("this classifier runs the shipped IR; load it with precision fp32")
        self.network.save(path)
