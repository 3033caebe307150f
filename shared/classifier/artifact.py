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
