"""The trained artifact: the head's weights plus a JSON manifest, composed with the base at load."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from shared.classifier.labels import CLASSES

MANIFEST_NAME = "manifest.json"
METRICS_NAME = "metrics.json"
HEAD_WEIGHTS_NAME = "head.weights.h5"
FORMAT = "intel-classifier/head-v1"


class BaseSpec(BaseModel):
    architecture: str = "xception"
    weights: str = Field(description="Identity of the base weights: imagenet, none or sha256:<hex>")


class Manifest(BaseModel):
    format: str = FORMAT
    version: str = ""
    classes: list[str] = Field(default_factory=lambda: list(CLASSES))
    input_size: int
    feature_dim: int = 2048
    dense_units: int
    dropout: float
    base: BaseSpec
    head_weights: str = HEAD_WEIGHTS_NAME
    head_sha256: str = ""
    training: dict[str, Any] = Field(default_factory=dict)
    validation: dict[str, Any] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def compute_version(manifest: Manifest) -> str:
    """A short hash of everything that changes predictions: head weights, classes, size, base."""
    identity = {
        "head": manifest.head_sha256,
        "classes": manifest.classes,
        "input_size": manifest.input_size,
        "dense_units": manifest.dense_units,
        "base": manifest.base.model_dump(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def finalize(manifest: Manifest, folder: Path) -> Manifest:
    """Hash the written head weights, stamp the version and write the manifest."""
    head_bytes = (folder / manifest.head_weights).read_bytes()
    manifest = manifest.model_copy(update={"head_sha256": hashlib.sha256(head_bytes).hexdigest()})
    manifest = manifest.model_copy(update={"version": compute_version(manifest)})
    (folder / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


def read_manifest(folder: Path) -> Manifest:
    return Manifest.model_validate_json((folder / MANIFEST_NAME).read_text())


def is_artifact(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST_NAME).is_file()


FINETUNED_FORMAT = "intel-classifier/finetuned-v2"
TOP_WEIGHTS_NAME = "top.weights.h5"
SERVING_XML = "model.xml"


class ServingForm(BaseModel):
    """The shipped inference form: the whole network as OpenVINO IR, INT8."""

    precision: str = "int8"
    xml: str = SERVING_XML
    sha256: str = Field(default="", description="sha256 of the IR's .xml and .bin together")
    acceptance: dict[str, Any] = Field(default_factory=dict)


class FineTunedManifest(BaseModel):
    """Model v2: block 14 and the head fine-tuned, with the INT8 IR that serving runs."""

    format: str = FINETUNED_FORMAT
    version: str = ""  # the weights' identity; each precision serves as "<version>-<precision>"
    classes: list[str] = Field(default_factory=lambda: list(CLASSES))
    input_size: int
    dense_units: int
    dropout: float
    first_block: int = 14  # the first fine-tuned block (13 or 14); the rest is ImageNet's
    temperature: float = 1.0
    base: BaseSpec
    top_weights: str = TOP_WEIGHTS_NAME
    top_sha256: str = ""
    serving: ServingForm = Field(default_factory=ServingForm)
    training: dict[str, Any] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def version_for(self, precision: str) -> str:
        return f"{self.version}-{precision}"


def finetuned_version(manifest: FineTunedManifest) -> str:
    identity = {
        "top": manifest.top_sha256,
        "classes": manifest.classes,
        "input_size": manifest.input_size,
        "temperature": manifest.temperature,
        "base": manifest.base.model_dump(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def files_sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def read_any_manifest(folder: Path) -> Manifest | FineTunedManifest:
    raw = json.loads((folder / MANIFEST_NAME).read_text())
    if raw.get("format") == FINETUNED_FORMAT:
        return FineTunedManifest.model_validate(raw)
    return Manifest.model_validate(raw)


def test_accuracy(folder: Path, precision: str) -> float | None:
    """The accuracy `metrics.json` gives for `precision` on the test split, where it does."""
    try:
        metrics = json.loads((folder / METRICS_NAME).read_text())
        report = metrics["test"][precision]
        return float(report["accuracy"]) if isinstance(report, dict) else float(report)
    except (OSError, ValueError, KeyError, TypeError):  # a v1 folder, a .keras file, no file
        return None
