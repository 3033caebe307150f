"""Post-training INT8 quantization (OpenVINO NNCF), kept only if accuracy holds.

Calibration uses images of the model's own training split; acceptance compares
the INT8 model's accuracy on the held-out split with the fp32 model's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shared.classifier.artifact import FineTunedManifest
from shared.classifier.model import (
    Classifier,
    engine_cache,
    int8_paths,
    load_classifier,
)
from shared.classifier.network import base_weights_identity
from shared.classifier.preprocessing import preprocess
from shared.errors import InvalidInput
from shared.training.dataset import LabelledImage, stratified_split
from shared.training.evaluation import evaluate_images, select_holdout

MAX_ACCURACY_DROP = 0.005  # half a point


def quantize_model(
    images: list[LabelledImage],
    model_path: Path,
    base_weights: str,
    cache_dir: Path,
    *,
    calibration_size: int = 300,
    batch_size: int = 16,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
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
    progress: Callable[[str, int], Callable[[int], None]] | None,
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
