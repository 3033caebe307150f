"""Make model v2 end to end: clean data, cache maps, fine-tune, calibrate, ship INT8 IR.

1. Drop exact duplicates (all copies where labels disagree, extra copies where they
   agree), then split train / validation / test (stratified, seeded).
2. Run the base once per image up to `add_11`; cache the maps.
3. Fine-tune block 14 + head on the training maps; choose the epoch on validation.
4. Fit the confidence temperature on validation; report ECE before and after.
5. Convert the whole network to OpenVINO, quantize it to INT8 (calibrated on
   training images), and accept it only if, on the test split, its accuracy is
   within MAX_ACCURACY_DROP of fp32 and it agrees with fp32 on MIN_AGREEMENT of images.
6. Write the folder serving needs: manifest, IR, fine-tuned weights, metrics.

The test split is used once, in step 5, for every figure reported.
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
from shared.classifier.engine import Backend, Engine, compile_openvino, convert_keras, make_engine
from shared.classifier.inference import infer_batches
from shared.classifier.labels import CLASSES
from shared.classifier.loaded import softmax
from shared.classifier.network import CUT_LAYERS, Network, base_weights_identity
from shared.classifier.preprocessing import preprocess
from shared.errors import InvalidInput
from shared.training.calibration import (
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from shared.training.config import ReleaseConfig
from shared.training.dataset import (
    LabelledImage,
    list_labelled_images,
    split_images,
)
from shared.training.evaluation import MAX_ACCURACY_DROP, ProgressFactory
from shared.training.features import FeatureSpec, compute_features
from shared.training.finetune import fit, logits_of
from shared.training.metrics import classification_report

log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.99


@dataclass(frozen=True)
class ReleaseResult:
    manifest: artifact.FineTunedManifest
    metrics: dict[str, Any]
    output_dir: Path
    seconds: float


def release(
    data_dir: Path,
    output_dir: Path,
    config: ReleaseConfig,
    *,
    base_weights: str,
    cache_dir: Path,
    backend: Backend = "auto",
    max_pixels: int = 40_000_000,
    progress: ProgressFactory | None = None,
) -> ReleaseResult:
    started = time.perf_counter()
    tuning = config.finetune
    every = list_labelled_images(data_dir)
    split = split_images(every, config.validation_fraction, config.test_fraction, tuning.seed)
    images, hashes, deduplication = split.images, split.hashes, split.deduplication
    labels = np.asarray([image.label for image in images])
    train_idx, val_idx, test_idx = split.train, split.validation, split.test
    log.info(
        "%d images after dropping %d conflicting and %d repeated copies: %d/%d/%d",
        len(images),
        len(deduplication.conflicting),
        len(deduplication.repeated),
        len(train_idx),
        len(val_idx),
        len(test_idx),
    )

    network = Network(
        base_weights, config.input_size, tuning.dense_units, tuning.dropout, tuning.first_block
    )
    identity = base_weights_identity(base_weights)
    maps_started = time.perf_counter()
    built: dict[str, Engine] = {}

    def engine() -> Engine:
        if "cut" not in built:
            built["cut"] = make_engine(network.up_to_cut(), backend)
        return built["cut"]

    maps = compute_features(
        [image.path for image in images],
        hashes,
        FeatureSpec(
            config.input_size,
            identity,
            layer=CUT_LAYERS[tuning.first_block],
            shape=network.map_shape,
            dtype="float16",
        ),
        engine=engine,
        cache_dir=cache_dir,
        batch_size=config.map_batch_size,
        max_pixels=max_pixels,
        on_progress=progress("base maps", len(images)) if progress else None,
    )
    maps_seconds = time.perf_counter() - maps_started
    readable = maps.readable
    train_idx = [i for i in train_idx if readable[i]]
    val_idx = [i for i in val_idx if readable[i]]
    if not train_idx or not val_idx:
        raise InvalidInput("too few readable images to train and validate")

    fitted = fit(
        network,
        maps.features[train_idx],
        labels[train_idx],
        maps.features[val_idx],
        labels[val_idx],
        tuning,
    )
    val_logits = logits_of(network.top, maps.features[val_idx])
    y_val = labels[val_idx]
    temperature = fit_temperature(val_logits, labels[val_idx])
    calibration = {
        "temperature": temperature,
        "validation_nll_before": round(negative_log_likelihood(val_logits, y_val, 1.0), 4),
        "validation_nll_after": round(negative_log_likelihood(val_logits, y_val, temperature), 4),
        "validation_ece_before": expected_calibration_error(softmax(val_logits), labels[val_idx]),
        "validation_ece_after": expected_calibration_error(
            softmax(val_logits, temperature), labels[val_idx]
        ),
    }
    validation_report = classification_report(labels[val_idx], val_logits.argmax(axis=1), CLASSES)

    output_dir.mkdir(parents=True, exist_ok=True)
    network.save_top(output_dir / artifact.TOP_WEIGHTS_NAME)
    manifest = artifact.FineTunedManifest(
        input_size=config.input_size,
        dense_units=tuning.dense_units,
        dropout=tuning.dropout,
        first_block=tuning.first_block,
        temperature=temperature,
        base=artifact.BaseSpec(weights=identity),
    )
    manifest.top_sha256 = artifact.files_sha256(output_dir / artifact.TOP_WEIGHTS_NAME)
    manifest.version = artifact.finetuned_version(manifest)

    shipped = _ship_int8(
        network,
        [images[i] for i in train_idx],
        [images[i] for i in test_idx],
        output_dir,
        config,
        temperature,
        max_pixels,
        progress,
    )
    manifest.serving = shipped.form
    seconds = time.perf_counter() - started
    manifest.training = {
        "recipe": f"fine-tune {_trained_part(tuning.first_block)}",
        **asdict(tuning),
        "validation_fraction": config.validation_fraction,
        "test_fraction": config.test_fraction,
        "best_epoch": fitted.best_epoch,
        "seconds_per_epoch": fitted.seconds_per_epoch,
        "maps_seconds": round(maps_seconds, 1),
        "maps_computed": maps.computed,
        "images": {
            "found": len(every),
            "train": len(train_idx),
            "validation": len(val_idx),
            "test": len(test_idx),
        },
        "deduplication": {
            "conflicting_dropped": len(deduplication.conflicting),
            "repeated_dropped": len(deduplication.repeated),
        },
        "seconds": round(seconds, 1),
    }
    (output_dir / artifact.MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
    metrics = {
        "model_version": manifest.version,
        "test": shipped.test,
        "validation": validation_report,
        "calibration": calibration,
        "int8": shipped.form.acceptance,
        "deduplication": deduplication.as_dict(),
        "history": fitted.history,
        "best_epoch": fitted.best_epoch,
    }
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _plot(output_dir, shipped.test, fitted.history, fitted.best_epoch, tuning.first_block)
    return ReleaseResult(manifest, metrics, output_dir, seconds)


@dataclass(frozen=True)
class _Shipped:
    form: artifact.ServingForm
    test: dict[str, Any]


def _ship_int8(
    network: Network,
    train_images: list[LabelledImage],
    test_images: list[LabelledImage],
    output_dir: Path,
    config: ReleaseConfig,
    temperature: float,
    max_pixels: int,
    progress: ProgressFactory | None,
) -> _Shipped:
    import nncf
    import openvino as ov

    fp32_model = convert_keras(network.complete())
    rng = np.random.default_rng(config.finetune.seed)
    chosen = sorted(
        int(i)
        for i in rng.choice(
            len(train_images), size=min(config.calibration_images, len(train_images)), replace=False
        )
    )
    calibration = [_load(train_images[i], config.input_size, max_pixels)[None] for i in chosen]
    quantize_started = time.perf_counter()
    int8_model = nncf.quantize(fp32_model, nncf.Dataset(calibration), subset_size=len(calibration))
    quantize_seconds = time.perf_counter() - quantize_started
    xml = output_dir / artifact.SERVING_XML
    ov.save_model(int8_model, xml, compress_to_fp16=False)

    outcomes = {}
    for name, model in (("fp32", fp32_model), ("int8", xml)):
        run = compile_openvino(model)
        started = time.perf_counter()
        logits, kept = _logits_on(test_images, run, config, max_pixels, progress, name)
        outcomes[name] = (logits, kept, len(test_images) / (time.perf_counter() - started))
    fp32_logits, kept, fp32_rate = outcomes["fp32"]
    int8_logits, _, int8_rate = outcomes["int8"]
    y_true = np.asarray([test_images[i].label for i in kept])
    fp32_pred, int8_pred = fp32_logits.argmax(axis=1), int8_logits.argmax(axis=1)
    fp32_report = classification_report(y_true, fp32_pred, CLASSES)
    int8_report = classification_report(y_true, int8_pred, CLASSES)
    agreement = float((fp32_pred == int8_pred).mean())
    drop = fp32_report["accuracy"] - int8_report["accuracy"]
    accepted = drop <= MAX_ACCURACY_DROP and agreement >= MIN_AGREEMENT
    acceptance = {
        "test_images": len(kept),
        "fp32_accuracy": fp32_report["accuracy"],
        "int8_accuracy": int8_report["accuracy"],
        "accuracy_drop": round(drop, 4),
        "agreement": round(agreement, 4),
        "max_accuracy_drop": MAX_ACCURACY_DROP,
        "min_agreement": MIN_AGREEMENT,
        "accepted": accepted,
        "calibration_images": len(calibration),
        "quantize_seconds": round(quantize_seconds, 1),
        "fp32_images_per_s": round(fp32_rate, 2),
        "int8_images_per_s": round(int8_rate, 2),
    }
    precision = "int8"
    if not accepted:
        # Serving still needs no TensorFlow: the fp32 IR ships instead (four times larger).
        log.warning("INT8 refused, shipping fp32 IR instead: %s", acceptance)
        ov.save_model(fp32_model, xml, compress_to_fp16=False)
        precision = "fp32"
    served = int8_report if accepted else fp32_report
    test = {
        "served": precision,
        "accuracy": served["accuracy"],
        "int8": int8_report,
        "fp32": fp32_report,
        "ece_uncalibrated": expected_calibration_error(
            softmax(int8_logits if accepted else fp32_logits), y_true
        ),
        "ece_calibrated": expected_calibration_error(
            softmax(int8_logits if accepted else fp32_logits, temperature), y_true
        ),
    }
    form = artifact.ServingForm(
        precision=precision,
        xml=artifact.SERVING_XML,
        sha256=artifact.files_sha256(xml, xml.with_suffix(".bin")),
        acceptance=acceptance,
    )
    return _Shipped(form, test)


def _load(image: LabelledImage, input_size: int, max_pixels: int) -> np.ndarray:
    return preprocess(image.path.read_bytes(), image.name, input_size, max_pixels)


def _logits_on(
    images: list[LabelledImage],
    run: Engine,
    config: ReleaseConfig,
    max_pixels: int,
    progress: ProgressFactory | None,
    name: str,
) -> tuple[np.ndarray, list[int]]:
    """Logits of every readable image, through the project's one batched-inference loop."""
    advance = progress(f"test split, {name}", len(images)) if progress else None
    rows: list[np.ndarray] = []
    kept: list[int] = []

    def decode(item: tuple[int, LabelledImage]) -> np.ndarray:
        return _load(item[1], config.input_size, max_pixels)

    batches = infer_batches(
        list(enumerate(images)), decode, run, batch_size=config.map_batch_size, workers=2
    )
    for batch in batches:
        for (index, _), output in zip(batch.items, batch.outputs, strict=True):
            if not isinstance(output, str):  # unreadable: left out for both precisions
                rows.append(output)
                kept.append(index)
        if advance:
            advance(len(batch.items))
    return np.stack(rows), kept


def _trained_part(first_block: int) -> str:
    blocks = "blocks 13 and 14" if first_block == 13 else "block 14"
    return f"{blocks} + head on cached {CUT_LAYERS[first_block]} maps"


def _plot(
    output_dir: Path,
    test: dict[str, Any],
    history: dict[str, list[float]],
    best_epoch: int,
    first_block: int,
) -> None:
    from shared.training.plots import plot_confusion_matrix, plot_training_curves

    served = test["served"]
    plot_confusion_matrix(
        test[served], output_dir / "confusion_matrix.png", f"Test split, {served.upper()}"
    )
    plot_training_curves(
        history,
        best_epoch,
        output_dir / "training_curves.png",
        f"Fine-tuning {_trained_part(first_block)}",
    )
