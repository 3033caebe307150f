"""Model v1 folders: a head trained on a frozen ImageNet base (format head-v1).

Loading one builds the base with Keras from BASE_WEIGHTS and composes the head;
`intel-classifier quantize` may have cached an INT8 form of it beside the fp32
OpenVINO form, which "auto" runs if its report accepted it. Model v2 folders
(`model.py`) replace all of this; it stays so that v1 folders keep loading.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from shared.classifier import artifact
from shared.classifier.engine import Backend, engine_cache, make_engine, resolve_backend
from shared.classifier.loaded import Classifier, Precision
from shared.classifier.network import base_weights_identity, build_base, build_head, compose
from shared.errors import ModelError

log = logging.getLogger(__name__)


def int8_paths(fp32_file: Path) -> tuple[Path, Path]:
    """The quantized model and its accuracy report, beside the fp32 form."""
    stem = fp32_file.with_name(f"{fp32_file.stem}-int8")
    return stem.with_suffix(".xml"), stem.with_suffix(".json")


def int8_verdict(fp32_file: Path | None) -> tuple[Path | None, bool]:
    """The cached INT8 form beside `fp32_file` (or None), and whether `quantize` accepted it."""
    if fp32_file is None:
        return None, False
    model_file, report_file = int8_paths(fp32_file)
    if not model_file.is_file():
        return None, False
    accepted = report_file.is_file() and bool(json.loads(report_file.read_text()).get("accepted"))
    return model_file, accepted


def int8_file(fp32_file: Path | None, precision: Precision) -> Path | None:
    """ "auto": the INT8 form if its report accepted it; "int8": the INT8 form regardless."""
    if precision == "fp32":
        return None
    model_file, accepted = int8_verdict(fp32_file)
    if model_file is not None and (accepted or precision == "int8"):
        return model_file
    if precision == "int8":
        raise ModelError(
            "INFERENCE_PRECISION=int8 but no INT8 model is cached for this model version: "
            "run `intel-classifier quantize DATA_DIR` first"
        )
    return None


def load_head_v1(
    folder: Path, base_weights: str, backend: Backend, cache_dir: Path | None, precision: Precision
) -> Classifier:
    manifest = artifact.read_manifest(folder)
    identity = base_weights_identity(base_weights)
    if identity != manifest.base.weights:
        log.warning(
            "base weights %s differ from those the head was trained on (%s); "
            "ImageNet weights from another file format are equivalent",
            identity,
            manifest.base.weights,
        )
    fp32_file = engine_cache(cache_dir, manifest.version, identity)
    base = build_base(base_weights, manifest.input_size)
    head = build_head(manifest.dense_units, manifest.dropout, len(manifest.classes))
    head.load_weights(folder / manifest.head_weights)
    network = compose(base, head)
    return Classifier(
        network=network,
        engine=make_engine(
            network,
            backend,
            fp32_file,
            int8_file(fp32_file, precision) if resolve_backend(backend) == "openvino" else None,
        ),
        classes=tuple(manifest.classes),
        input_size=manifest.input_size,
        version=manifest.version,
        manifest=manifest,
    )
