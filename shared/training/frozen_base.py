"""Train the head on cached base features and write the artifact, metrics and plots."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.classifier import artifact
from shared.classifier.engine import Backend, Engine, make_engine
from shared.classifier.labels import CLASSES
from shared.classifier.model import softmax
from shared.classifier.network import base_weights_identity, build_base, build_head
from shared.errors import InvalidInput
from shared.training.augment import Augmentation
from shared.training.dataset import list_labelled_images, stratified_split
from shared.training.features import FeatureSpec, compute_features, content_hashes
from shared.training.metrics import classification_report
from shared.training.plots import plot_confusion_matrix, plot_training_curves

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    input_size: int = 299
    batch_size: int = 16
    epochs: int = 20
    learning_rate: float = 1e-3
    dense_units: int = 100
    dropout: float = 0.2
    validation_fraction: float = 0.2
    seed: int = 42
    augment_views: int = 0
    augmentation: Augmentation = field(default_factory=Augmentation)


@dataclass(frozen=True)
class TrainResult:
    manifest: artifact.Manifest
    report: dict[str, Any]
    output_dir: Path
    seconds: float
    images_computed: int


ProgressFactory = Callable[[str, int], Callable[[int], None]]


def train(
    data_dir: Path,
    output_dir: Path,
    config: TrainConfig,
    *,
    base_weights: str,
    cache_dir: Path,
    backend: Backend = "auto",
    feature_batch_size: int = 16,
    max_pixels: int = 40_000_000,
    progress: ProgressFactory | None = None,
) -> TrainResult:
    started = time.perf_counter()
    images = list_labelled_images(data_dir)
    labels = [image.label for image in images]
    train_idx, val_idx = stratified_split(labels, config.validation_fraction, config.seed)
    identity = base_weights_identity(base_weights)
    hashes = content_hashes([image.path for image in images])

    network: dict[str, Engine] = {}

    def engine() -> Engine:
        if "base" not in network:
            network["base"] = make_engine(build_base(base_weights, config.input_size), backend)
        return network["base"]

    def features_for(indices: list[int], view: int) -> tuple[np.ndarray, np.ndarray, int]:
        spec = FeatureSpec(config.input_size, identity, view, config.augmentation, config.seed)
        label = "features" if view == 0 else f"augmented view {view}"
        result = compute_features(
            [images[i].path for i in indices],
            [hashes[i] for i in indices],
            spec,
            engine=engine,
            cache_dir=cache_dir,
            batch_size=feature_batch_size,
            max_pixels=max_pixels,
            on_progress=progress(label, len(indices)) if progress else None,
        )
        return result.features, result.readable, result.computed

    # View 0 of every image in one pass (train and validation), in dataset order.
    all_features, all_readable, computed = features_for(list(range(len(images))), 0)
    x_train_parts = [all_features[train_idx][all_readable[train_idx]]]
    y_train_parts = [np.asarray(labels)[train_idx][all_readable[train_idx]]]
    for view in range(1, config.augment_views + 1):
        view_features, view_readable, view_computed = features_for(train_idx, view)
        x_train_parts.append(view_features[view_readable])
        y_train_parts.append(np.asarray(labels)[train_idx][view_readable])
        computed += view_computed
    x_train, y_train = np.concatenate(x_train_parts), np.concatenate(y_train_parts)
    val_keep = [i for i in val_idx if all_readable[i]]
    x_val, y_val = all_features[val_keep], np.asarray(labels)[val_keep]
    unreadable = [images[i].name for i in range(len(images)) if not all_readable[i]]
    if len(x_train) == 0 or len(x_val) == 0:
        raise InvalidInput("too few readable images to train and validate")

    head, history, best_epoch = _fit_head(x_train, y_train, x_val, y_val, config)
    probabilities = softmax(np.asarray(head.predict(x_val, verbose=0), dtype=np.float64))
    report = classification_report(y_val, probabilities.argmax(axis=1), CLASSES)

    output_dir.mkdir(parents=True, exist_ok=True)
    head.save_weights(output_dir / artifact.HEAD_WEIGHTS_NAME)
    seconds = time.perf_counter() - started
    manifest = artifact.finalize(
        artifact.Manifest(
            input_size=config.input_size,
            dense_units=config.dense_units,
            dropout=config.dropout,
            base=artifact.BaseSpec(weights=identity),
            training={
                **{k: v for k, v in asdict(config).items() if k != "augmentation"},
                "augmentation": asdict(config.augmentation),
                "best_epoch": best_epoch,
                "train_images": len(train_idx),
                "train_examples": len(x_train),
                "validation_images": len(val_keep),
                "unreadable_images": unreadable,
                "seconds": round(seconds, 1),
            },
            validation={
                "accuracy": report["accuracy"],
                "loss": history["val_loss"][best_epoch - 1],
            },
        ),
        output_dir,
    )
    _write_reports(output_dir, report, history, best_epoch, manifest)
    return TrainResult(manifest, report, output_dir, seconds, computed)


def _fit_head(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: TrainConfig,
) -> tuple[Any, dict[str, list[float]], int]:
    import keras

    keras.utils.set_random_seed(config.seed)
    head = build_head(config.dense_units, config.dropout)
    head.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    keeper = _keep_best_callback()
    fitted = head.fit(
        x_train,
        keras.utils.to_categorical(y_train, len(CLASSES)),
        batch_size=config.batch_size,
        epochs=config.epochs,
        validation_data=(x_val, keras.utils.to_categorical(y_val, len(CLASSES))),
        callbacks=[keeper],
        shuffle=True,
        verbose=0,
    )
    # A fresh, uncompiled copy: its weights file holds no optimizer state (a third the size).
    best = build_head(config.dense_units, config.dropout)
    best.set_weights(keeper.best_weights)
    history = {key: [float(v) for v in values] for key, values in fitted.history.items()}
    return best, history, keeper.best_epoch


def _keep_best_callback() -> Any:
    """A callback that remembers the weights of the epoch with the lowest validation loss."""
    import keras

    class KeepBest(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.best_loss = float("inf")
            self.best_epoch = 0
            self.best_weights: list[Any] = []

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            loss = float((logs or {}).get("val_loss", float("inf")))
            if loss < self.best_loss:
                self.best_loss, self.best_epoch = loss, epoch + 1
                self.best_weights = self.model.get_weights()

    return KeepBest()


def _write_reports(
    output_dir: Path,
    report: dict[str, Any],
    history: dict[str, list[float]],
    best_epoch: int,
    manifest: artifact.Manifest,
) -> None:
    metrics = {"model_version": manifest.version, "validation": report, "history": history}
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_confusion_matrix(report, output_dir / "confusion_matrix.png", "Validation")
    plot_training_curves(history, best_epoch, output_dir / "training_curves.png")
