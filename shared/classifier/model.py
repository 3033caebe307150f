"""The network and how a model folder is loaded for inference.

Model v2 folders (`intel-classifier/finetuned-v2`, the shipped `models/default`)
carry their serving form, the whole network as OpenVINO INT8 IR: loading it
needs OpenVINO and nothing else. Their fp32 reference form, and v1 folders (a
frozen base plus a head), are built with Keras from BASE_WEIGHTS.

TensorFlow and Keras are imported inside functions, and only on those paths.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from shared.classifier import artifact
from shared.classifier.engine import (
    Backend,
    Engine,
    compile_openvino,
    make_engine,
    resolve_backend,
)
from shared.classifier.labels import CLASSES
from shared.classifier.network import (
    Network,
    base_weights_identity,
    build_base,
    build_head,
    compose,
)
from shared.classifier.runner import Pending, ThroughputRunner, compile_throughput
from shared.errors import ModelError

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "int8"]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probs: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return probs


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

    def start(self, batch: np.ndarray, urgent: bool = False) -> Pending:
        """Queue `batch` on the engine; its rows' logits, as they finish (`probabilities`)."""
        if not isinstance(self.engine, ThroughputRunner):
            raise ModelError("this engine runs one batch at a time; call predict")
        return self.engine.start(batch, urgent)

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
        return _load_artifact(model_path, base_weights, backend, cache_dir, precision)
    if model_path.is_file() and model_path.suffix == ".keras":
        return _load_keras_file(model_path, backend, cache_dir)
    raise ModelError(
        f"MODEL_PATH {str(model_path)!r} is neither an artifact folder with "
        f"{artifact.MANIFEST_NAME} nor a .keras file"
    )


def engine_cache(cache_dir: Path | None, version: str, base: str) -> Path | None:
    if cache_dir is None:
        return None
    base_key = base.removeprefix("sha256:")[:12]
    return cache_dir / "openvino" / f"{version}-{base_key}.xml"


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


def _int8_file(fp32_file: Path | None, precision: Precision) -> Path | None:
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


def _load_artifact(
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
            _int8_file(fp32_file, precision) if resolve_backend(backend) == "openvino" else None,
        ),
        classes=tuple(manifest.classes),
        input_size=manifest.input_size,
        version=manifest.version,
        manifest=manifest,
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
    network = Network(base_weights, manifest.input_size, manifest.dense_units, manifest.dropout)
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
