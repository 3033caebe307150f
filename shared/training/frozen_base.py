"""Model v1, the frozen-base recipe: the head trained on cached base features, and its INT8 form.

`train --frozen-base` writes the folder, metrics and plots; `quantize` makes the
INT8 form (OpenVINO NNCF) of such a folder, kept for INFERENCE_PRECISION=auto
only if its accuracy on the held-out split is within MAX_ACCURACY_DROP of fp32.
Model v2 (`release.py`) ships its INT8 form itself; this module is the one
place the v1 recipe lives (its folders load in `shared.classifier.head_v1`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.classifier import artifact
from shared.classifier.artifact import FineTunedManifest
from shared.classifier.engine import Backend, Engine, engine_cache, make_engine
from shared.classifier.head_v1 import int8_paths
from shared.classifier.labels import CLASSES
from shared.classifier.loaded import Classifier, softmax
from shared.classifier.model import load_classifier
from shared.classifier.network import base_weights_identity, build_base, build_head
from shared.classifier.preprocessing import preprocess
from shared.errors import InvalidInput
from shared.training.config import TrainConfig
from shared.training.dataset import LabelledImage, list_labelled_images, stratified_split
from shared.training.evaluation import (
    MAX_ACCURACY_DROP,
    ProgressFactory,
    evaluate_images,
    select_holdout,
)
from shared.training.features import FeatureSpec, compute_features, content_hashes
from shared.training.metrics import classification_report
from shared.training.plots import plot_confusion_matrix, plot_training_curves

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    manifest: artifact.Manifest
    report: dict[str, Any]
    output_dir: Path
    seconds: float
    images_computed: int


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


def quantize_model(
    images: list[LabelledImage],
    model_path: Path,
    base_weights: str,
    cache_dir: Path,
    *,
    calibration_size: int = 300,
    batch_size: int = 16,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Write the INT8 model and its report beside the cached fp32 form; return the report."""
    import nncf
    import openvino as ov

    from shared.classifier.engine import save_openvino

    fp32 = load_classifier(model_path, base_weights, "openvino", cache_dir, precision="fp32")
    manifest = fp32.manifest
    if isinstance(manifest, FineTunedManifest):
        raise InvalidInput(
            "this model ships its INT8 form (made and accepted by `intel-classifier train`); "
            "quantize applies to frozen-base (v1) models only"
        )
    if manifest is None or "seed" not in manifest.training:
        raise InvalidInput("quantization needs a model artifact whose manifest records its split")
    fp32_file = engine_cache(cache_dir, manifest.version, base_weights_identity(base_weights))
    if fp32_file is None or not fp32_file.is_file():
        raise InvalidInput("the OpenVINO form of the model was not cached; is openvino installed?")
    int8_file, report_file = int8_paths(fp32_file)
    report_file.unlink(missing_ok=True)  # an old verdict must not vouch for a new model

    training = manifest.training
    train_idx, _ = stratified_split(
        [i.label for i in images], training["validation_fraction"], training["seed"]
    )
    rng = np.random.default_rng(training["seed"])
    chosen = rng.choice(train_idx, size=min(calibration_size, len(train_idx)), replace=False)
    calibration = [
        preprocess(images[i].path.read_bytes(), images[i].name, fp32.input_size, 10**9)[None]
        for i in sorted(int(c) for c in chosen)
    ]
    started = time.perf_counter()
    quantized = nncf.quantize(
        ov.Core().read_model(fp32_file), nncf.Dataset(calibration), subset_size=len(calibration)
    )
    save_openvino(ov, quantized, int8_file)
    seconds = time.perf_counter() - started

    holdout = select_holdout(images, manifest)
    int8 = load_classifier(model_path, base_weights, "openvino", cache_dir, precision="int8")
    report = _compare(fp32, int8, holdout, batch_size, progress)
    report.update(
        {
            "model_version": manifest.version,
            "calibration_images": len(calibration),
            "quantize_seconds": round(seconds, 1),
            "max_accuracy_drop": MAX_ACCURACY_DROP,
        }
    )
    report_file.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _compare(
    fp32: Classifier,
    int8: Classifier,
    holdout: list[LabelledImage],
    batch_size: int,
    progress: ProgressFactory | None,
) -> dict[str, Any]:
    results = {}
    for name, classifier in (("fp32", fp32), ("int8", int8)):
        started = time.perf_counter()
        report = evaluate_images(holdout, classifier, batch_size=batch_size, progress=progress)
        results[name] = {
            "accuracy": report["accuracy"],
            "images_per_s": round(len(holdout) / (time.perf_counter() - started), 2),
        }
    drop = results["fp32"]["accuracy"] - results["int8"]["accuracy"]
    return {
        "holdout_images": len(holdout),
        "fp32": results["fp32"],
        "int8": results["int8"],
        "accuracy_drop": round(drop, 4),
        "accepted": drop <= MAX_ACCURACY_DROP,
    }
