"""How a model folder (or a .keras file) is loaded for inference.

Model v2 folders (`intel-classifier/finetuned-v2`, the shipped `models/default`)
carry their serving form, the whole network as OpenVINO INT8 IR: loading it
needs OpenVINO and nothing else. Their fp32 reference form is built with Keras
from BASE_WEIGHTS; v1 folders (a frozen base plus a head) load in `head_v1.py`.

TensorFlow and Keras are imported inside functions, and only on those paths.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from shared.classifier import artifact
from shared.classifier.engine import (
    Backend,
    compile_openvino,
    engine_cache,
    make_engine,
    resolve_backend,
)
from shared.classifier.head_v1 import load_head_v1
from shared.classifier.labels import CLASSES
from shared.classifier.loaded import Classifier, Precision
from shared.classifier.network import (
    Network,
)
from shared.classifier.runner import compile_throughput
from shared.errors import ModelError

log = logging.getLogger(__name__)


def load_classifier(
    model_path: Path,
    base_weights: str,
    backend: Backend = "auto",
    cache_dir: Path | None = None,
    precision: Precision = "fp32",
    throughput: bool = False,
) -> Classifier:
    """Load an artifact folder (composing base + head) or a complete `.keras` file.

    With `throughput`, the shipped IR runs in OpenVINO's throughput mode
    (`runner.ThroughputRunner`: requests in flight, `Classifier.start`), as
    workers run it; otherwise one batch at a time on every core, as the CLI does.

    With `cache_dir`, the OpenVINO form of the model is cached there by model
    version, and `precision` "int8" or "auto" runs its quantized form when
    `intel-classifier quantize` made one that kept accuracy ("int8" insists).
    """
    if artifact.is_artifact(model_path):
        manifest = artifact.read_any_manifest(model_path)
        if isinstance(manifest, artifact.FineTunedManifest):
            return _load_finetuned(
                model_path, manifest, base_weights, backend, cache_dir, precision, throughput
            )
        return load_head_v1(model_path, base_weights, backend, cache_dir, precision)
    if model_path.is_file() and model_path.suffix == ".keras":
        return _load_keras_file(model_path, backend, cache_dir)
    raise ModelError(
        f"MODEL_PATH {str(model_path)!r} is neither an artifact folder with "
        f"{artifact.MANIFEST_NAME} nor a .keras file"
    )


def _load_finetuned(
    folder: Path,
    manifest: artifact.FineTunedManifest,
    base_weights: str,
    backend: Backend,
    cache_dir: Path | None,
    precision: Precision,
    throughput: bool = False,
) -> Classifier:
    """The shipped IR for "auto"/"int8" (OpenVINO only); the Keras reference for "fp32"."""
    serving = manifest.serving
    wants_ir = precision in {"auto", "int8"} and backend != "tensorflow"
    if wants_ir:
        xml = folder / serving.xml
        if not xml.is_file() or not xml.with_suffix(".bin").is_file():
            raise ModelError(f"{str(folder)!r} lacks its serving form {serving.xml} (+ .bin)")
        return Classifier(
            network=None,
            engine=compile_throughput(xml) if throughput else compile_openvino(xml),
            classes=tuple(manifest.classes),
            input_size=manifest.input_size,
            version=manifest.version_for(serving.precision),
            manifest=manifest,
            temperature=manifest.temperature,
            precision=serving.precision,
        )
    if precision == "int8":
        raise ModelError("INFERENCE_PRECISION=int8 runs the shipped IR, which needs OpenVINO")
    network = Network(
        base_weights,
        manifest.input_size,
        manifest.dense_units,
        manifest.dropout,
        manifest.first_block,
    )
    network.load_top(folder / manifest.top_weights)
    complete = network.complete()
    version = manifest.version_for("fp32")
    chosen = resolve_backend(backend)
    return Classifier(
        network=complete,
        engine=make_engine(complete, chosen, engine_cache(cache_dir, version, "fp32")),
        classes=tuple(manifest.classes),
        input_size=manifest.input_size,
        version=version,
        manifest=manifest,
        temperature=manifest.temperature,
        precision="fp32",
        engine_name=chosen,
    )


def _load_keras_file(path: Path, backend: Backend, cache_dir: Path | None) -> Classifier:
    import keras

    try:
        network = keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise ModelError(f"cannot load model file {str(path)!r}: {exc}") from exc
    n_outputs = network.output_shape[-1]
    if n_outputs != len(CLASSES):
        raise ModelError(f"{path.name} has {n_outputs} outputs; this service needs {len(CLASSES)}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Classifier(
        network=network,
        engine=make_engine(network, backend, engine_cache(cache_dir, digest[:12], "keras")),
        classes=CLASSES,
        input_size=int(network.input_shape[1]),
        version=digest[:12],
    )
