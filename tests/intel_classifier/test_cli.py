"""The `intel-classifier` command as a user runs it: real processes, the shipped model."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from shared.classifier import artifact
from shared.classifier.labels import CLASSES
from shared.settings import DEFAULT_MODEL_PATH
from shared.training.dataset import list_labelled_images
from shared.training.evaluation import select_holdout
from testkit.processes import Service, free_port, service_env, wait_for
from tests.conftest import image_bytes, sample_dataset

pytestmark = pytest.mark.model

CLI = [sys.executable, "-m", "intel_classifier"]


def run_cli(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, **env},
    )


@pytest.fixture(scope="module")
def holdout(train_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five images per class from the shipped model's own test split: never trained on."""
    manifest = artifact.read_any_manifest(DEFAULT_MODEL_PATH)
    validation = select_holdout(list_labelled_images(train_dir), manifest)
    target = tmp_path_factory.mktemp("holdout")
    taken = dict.fromkeys(CLASSES, 0)
    for image in validation:
        label = CLASSES[image.label]
        if taken[label] < 5:
            (target / label).mkdir(exist_ok=True)
            (target / label / image.path.name).symlink_to(image.path)
            taken[label] += 1
    return target


def test_shipped_model_evaluates_held_out_images(holdout: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "metrics.json"
    result = run_cli("evaluate", str(holdout), "--json", str(report_path))
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["n"] == 30
    assert set(report["per_class"]) == set(CLASSES)
    assert len(report["confusion_matrix"]) == 6
    assert report["accuracy"] >= 0.8


def test_classify_writes_a_row_per_file_and_an_error_row_per_bad_one(
    holdout: Path, tmp_path: Path
) -> None:
    sea, forest = sorted((holdout / "sea").iterdir())[0], sorted((holdout / "forest").iterdir())[0]
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "sea.jpg").write_bytes(sea.read_bytes())
    truncated = image_bytes(size=(150, 150), fmt="JPEG", colour=(9, 99, 199))
    (folder / "broken.jpg").write_bytes(truncated[: len(truncated) // 3])
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("inside/forest.jpg", forest.read_bytes())
        zf.writestr("inside/readme.txt", "not an image")
    output = tmp_path / "out.csv"

    result = run_cli("classify", str(folder), str(archive), "--output", str(output))

    assert result.returncode == 1, result.stderr  # something failed, and the exit code says so
    assert "2 classified, 2 failed" in result.stderr
    rows = {Path(r["path"]).name: r for r in csv.DictReader(io.StringIO(output.read_text()))}
    assert list(next(iter(rows.values()))) == ["path", "class", "confidence", *CLASSES, "error"]
    assert rows["sea.jpg"]["class"] == "sea"
    assert rows["forest.jpg"]["class"] == "forest"
    assert rows["forest.jpg"]["path"].endswith("batch.zip/inside/forest.jpg")
    for name in ("sea.jpg", "forest.jpg"):
        scores = [float(rows[name][label]) for label in CLASSES]
        assert sum(scores) == pytest.approx(1.0, abs=1e-4)
        assert float(rows[name]["confidence"]) == pytest.approx(max(scores), abs=1e-6)
    assert "broken.jpg" in rows["broken.jpg"]["error"]
    assert rows["broken.jpg"]["class"] == ""
    assert "not a recognised image format" in rows["readme.txt"]["error"]


def test_classify_json_by_extension(holdout: Path, tmp_path: Path) -> None:
    image = sorted((holdout / "glacier").iterdir())[0]
    output = tmp_path / "out.json"
    # From the install alone: BASE_WEIGHTS=imagenet would mean a download, which this
    # offline machine cannot make, and the cache is empty. The shipped IR needs neither.
    result = run_cli(
        "classify",
        str(image),
        "-o",
        str(output),
        BASE_WEIGHTS="imagenet",
        CACHE_DIR=str(tmp_path / "empty-cache"),
    )
    assert result.returncode == 0, result.stderr
    [row] = json.loads(output.read_text())
    assert row["path"] == str(image)
    assert row["class"] in CLASSES
    assert row["error"] is None


def test_train_command_writes_an_artifact_the_other_commands_load(
    train_dir: Path, tmp_path: Path
) -> None:
    data = sample_dataset(train_dir, tmp_path / "data", per_class=4, offset=100)
    model = tmp_path / "model"
    result = run_cli(
        "train", str(data), "--output", str(model), "--input-size", "71", "--epochs", "1"
    )
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout
    assert "on the test split" in result.stdout
    assert {p.name for p in model.iterdir()} == {
        "manifest.json",
        "top.weights.h5",
        "model.xml",
        "model.bin",
        "metrics.json",
        "confusion_matrix.png",
        "training_curves.png",
    }
    classified = run_cli("classify", str(data / "sea"), "--model", str(model))
    assert classified.returncode == 0, classified.stderr
    assert len(classified.stdout.strip().splitlines()) == 1 + 4


def test_errors_are_one_line_with_a_non_zero_exit(tmp_path: Path) -> None:
    result = run_cli("evaluate", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "is not a folder of class subfolders" in result.stderr


@pytest.mark.parametrize("command", ["submit", "cancel", "classify", "train", "serve"])
def test_help_speaks_in_words_with_defaults(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for python_type in ("<str>", "<int>", "<bool>", "<path>", "<list[", "{"):
        assert python_type not in text, python_type
    assert "Port ." not in text  # "[env PORT]" once vanished as if it were markup
    if command in {"submit", "cancel"}:
        assert "[default:" in text
        assert "http://127.0.0.1:9696" in text


@pytest.mark.parametrize("asked", [False, True])
def test_api_logs_requests_only_when_asked(tmp_path: Path, asked: bool) -> None:
    service = Service(service_env(tmp_path), tmp_path, free_port())
    service.migrate()
    flags = ["--access-log"] if asked else []
    process = service.spawn("api", "api", "--port", str(service.port), *flags)
    try:
        wait_for(lambda: _answers(f"{service.url}/healthz"), 60, "the API")
        httpx.get(f"{service.url}/jobs", timeout=10)
        wait_for(lambda: "Uvicorn running" in process.output(), 10, "uvicorn's start line")
        time.sleep(0.5)  # a logged line would be written by now
        assert ('"GET /jobs HTTP/1.1" 200' in process.output()) is asked
    finally:
        service.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_webhooks_secret_prints_a_new_secret_the_signer_takes() -> None:
    from shared.webhooks.signing import secret_bytes

    made = [
        subprocess.run(
            [sys.executable, "-m", "intel_classifier", "webhooks", "secret"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        for _ in range(2)
    ]  # fmt: skip
    assert all(secret.startswith("whsec_") for secret in made)
    assert [len(secret_bytes(secret)) for secret in made] == [32, 32]
    assert made[0] != made[1]
