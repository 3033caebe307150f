"""Serving needs what the worker role installs: the shipped INT8 IR runs on OpenVINO alone.

`serve` runs here in processes where importing TensorFlow or Keras raises, with
BASE_WEIGHTS=imagenet (a download, which this offline machine cannot make) and
an empty CACHE_DIR: nothing but the files in `models/default` may be needed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.classifier import artifact
from shared.classifier.labels import CLASSES
from shared.settings import DEFAULT_MODEL_PATH
from testkit.processes import Service, running_serve
from tests.conftest import holdout_sample

pytestmark = pytest.mark.model

BLOCKED = "raise ImportError('{name} is blocked here: serving must not need it')\n"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("no-tf")
    blocked = data_dir / "blocked"
    for name in ("tensorflow", "keras"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(BLOCKED.format(name=name))
    path = os.pathsep.join(p for p in (str(blocked), os.environ.get("PYTHONPATH", "")) if p)
    with running_serve(
        data_dir,
        PYTHONPATH=path,
        BASE_WEIGHTS="imagenet",
        CACHE_DIR=str(data_dir / "empty-cache"),
        MODEL_PATH=str(DEFAULT_MODEL_PATH),
    ) as service:
        yield service


def test_the_worker_classifies_with_the_shipped_ir_and_no_tensorflow(
    service: Service, train_dir: Path
) -> None:
    manifest = artifact.read_any_manifest(DEFAULT_MODEL_PATH)
    assert isinstance(manifest, artifact.FineTunedManifest)
    images = holdout_sample(train_dir, per_class=1)
    with service.client() as client:
        files = [("files", (i.path.name, i.path.read_bytes(), "image/jpeg")) for i in images]
        job = client.post("/jobs", files=files).json()
        done = service.wait_job(job["id"])
        items = client.get(f"/jobs/{job['id']}/results").json()["items"]
    assert done["status"] == "succeeded", done
    assert done["model_version"] == manifest.version_for("int8")
    assert {item["model_version"] for item in items} == {manifest.version_for("int8")}
    right = sum(
        item["class"] == CLASSES[image.label] for image, item in zip(images, items, strict=True)
    )
    assert right >= len(images) - 1  # one holdout photo per class; the model is ~94 % right
    assert "blocked here" not in service.logs()
