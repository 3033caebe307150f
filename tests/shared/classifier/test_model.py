"""The real network: training on a sample, artifact and .keras round trips, engine parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.classifier import artifact
from shared.classifier.loaded import Classifier
from shared.classifier.model import load_classifier
from shared.classifier.preprocessing import preprocess
from shared.errors import ModelError
from shared.settings import DEFAULT_MODEL_PATH
from shared.training.config import TrainConfig
from shared.training.dataset import list_labelled_images
from shared.training.frozen_base import TrainResult, quantize_model, train
from tests.conftest import sample_dataset

pytestmark = pytest.mark.model

SIZE = 71  # Xception's smallest input: the real network, at a fraction of the cost


@pytest.fixture(scope="module")
def tiny_dataset(train_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample_dataset(train_dir, tmp_path_factory.mktemp("tiny"), per_class=5)


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def trained(
    tiny_dataset: Path,
    base_weights: str,
    feature_cache: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> TrainResult:
    return train(
        tiny_dataset,
        tmp_path_factory.mktemp("artifact"),
        TrainConfig(input_size=SIZE, epochs=4, augment_views=1),
        base_weights=base_weights,
        cache_dir=feature_cache,
    )


@pytest.fixture(scope="module")
def batch(tiny_dataset: Path) -> np.ndarray:
    images = list_labelled_images(tiny_dataset)[::5]
    return np.stack([preprocess(i.path.read_bytes(), i.name, SIZE, 10**8) for i in images])


@pytest.fixture(scope="module")
def loaded(trained: TrainResult, base_weights: str) -> Classifier:
    return load_classifier(trained.output_dir, base_weights, "openvino")


def test_training_writes_a_small_complete_artifact(trained: TrainResult) -> None:
    folder = trained.output_dir
    manifest = artifact.read_manifest(folder)
    assert manifest.classes == ["buildings", "forest", "glacier", "mountain", "sea", "street"]
    assert manifest.input_size == SIZE
    assert manifest.base.weights.startswith("sha256:c51edf65")
    assert manifest.version == artifact.compute_version(manifest) == trained.manifest.version
    assert manifest.training["validation_images"] == 6  # one of five per class
    assert manifest.training["train_examples"] == 2 * 24  # plain view plus one augmented view
    assert 1 <= manifest.training["best_epoch"] <= 4
    assert (folder / "head.weights.h5").stat().st_size < 1_000_000  # no optimizer state
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["validation"]["n"] == 6
    assert set(metrics["history"]) >= {"loss", "val_loss", "accuracy", "val_accuracy"}
    for picture in ("confusion_matrix.png", "training_curves.png"):
        with Image.open(folder / picture) as image:
            assert image.format == "PNG"
            assert image.width > 400


def test_second_run_reads_features_from_the_cache(
    trained: TrainResult, tiny_dataset: Path, base_weights: str, feature_cache: Path, tmp_path: Path
) -> None:
    assert trained.images_computed == 30 + 24  # every image once, plus the training view
    again = train(
        tiny_dataset,
        tmp_path / "again",
        TrainConfig(input_size=SIZE, epochs=4, augment_views=1),
        base_weights=base_weights,
        cache_dir=feature_cache,
    )
    assert again.images_computed == 0
    assert again.report["confusion_matrix"] == trained.report["confusion_matrix"]
    resized = train(
        tiny_dataset,
        tmp_path / "resized",
        TrainConfig(input_size=SIZE + 1, epochs=1),
        base_weights=base_weights,
        cache_dir=feature_cache,
    )
    assert resized.images_computed == 30  # another input size is another cache entry


def test_artifact_reload_gives_identical_predictions(
    trained: TrainResult, loaded: Classifier, batch: np.ndarray, base_weights: str
) -> None:
    reloaded = load_classifier(trained.output_dir, base_weights, "openvino")
    assert reloaded.version == trained.manifest.version
    np.testing.assert_array_equal(loaded.predict(batch), reloaded.predict(batch))
    probabilities = loaded.predict(batch)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_keras_file_round_trip(loaded: Classifier, batch: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "complete.keras"
    loaded.save_keras(path)
    from_file = load_classifier(path, "none", "openvino")
    assert from_file.input_size == SIZE
    assert from_file.classes == loaded.classes
    np.testing.assert_allclose(from_file.predict(batch), loaded.predict(batch), atol=1e-6)


def test_openvino_and_tensorflow_engines_agree(
    trained: TrainResult, loaded: Classifier, batch: np.ndarray, base_weights: str
) -> None:
    tensorflow = load_classifier(trained.output_dir, base_weights, "tensorflow")
    np.testing.assert_allclose(tensorflow.predict(batch), loaded.predict(batch), atol=1e-4)


def test_a_missing_model_or_weights_file_is_a_clear_error(
    trained: TrainResult, tmp_path: Path
) -> None:
    with pytest.raises(ModelError, match="neither an artifact folder"):
        load_classifier(tmp_path, "none")
    with pytest.raises(ModelError, match="does not exist"):
        load_classifier(trained.output_dir, str(tmp_path / "missing.h5"))


def test_openvino_form_is_cached_by_model_version(
    trained: TrainResult, batch: np.ndarray, base_weights: str, tmp_path: Path
) -> None:
    first = load_classifier(trained.output_dir, base_weights, "openvino", cache_dir=tmp_path)
    cached = list((tmp_path / "openvino").glob("*.xml"))
    assert [p.name.split("-")[0] for p in cached] == [trained.manifest.version]
    assert cached[0].with_suffix(".bin").is_file()
    second = load_classifier(trained.output_dir, base_weights, "openvino", cache_dir=tmp_path)
    np.testing.assert_array_equal(first.predict(batch), second.predict(batch))


def test_shipped_model_backends_agree_on_real_images(train_dir: Path, base_weights: str) -> None:
    images = [
        image
        for index, image in enumerate(list_labelled_images(train_dir))
        if index % 729 == 0  # twelve images spread over the six classes
    ]
    arrays = np.stack([preprocess(i.path.read_bytes(), i.name, 299, 10**8) for i in images])
    openvino = load_classifier(DEFAULT_MODEL_PATH, base_weights, "openvino").predict(arrays)
    tensorflow = load_classifier(DEFAULT_MODEL_PATH, base_weights, "tensorflow").predict(arrays)
    assert len(images) == 12
    assert (openvino.argmax(axis=1) == tensorflow.argmax(axis=1)).all()
    assert np.abs(openvino - tensorflow).max() < 1e-3

    # The shipped INT8 form, run with no base weights at all, agrees with the reference.
    shipped = load_classifier(DEFAULT_MODEL_PATH, "none", "auto", precision="auto")
    manifest = artifact.read_any_manifest(DEFAULT_MODEL_PATH)
    assert isinstance(manifest, artifact.FineTunedManifest)
    assert shipped.version == manifest.version_for("int8") != manifest.version_for("fp32")
    assert (shipped.predict(arrays).argmax(axis=1) == openvino.argmax(axis=1)).sum() >= 11


def test_int8_quantization_reports_both_accuracies_and_auto_follows_it(
    trained: TrainResult, tiny_dataset: Path, batch: np.ndarray, base_weights: str, tmp_path: Path
) -> None:
    with pytest.raises(ModelError, match="run `intel-classifier quantize"):
        load_classifier(trained.output_dir, base_weights, "openvino", tmp_path, precision="int8")
    report = quantize_model(
        list_labelled_images(tiny_dataset),
        trained.output_dir,
        base_weights,
        tmp_path,
        calibration_size=12,
    )
    assert report["calibration_images"] == 12
    assert report["holdout_images"] == 6
    assert report["accepted"] == (report["accuracy_drop"] <= 0.005)
    assert 0.0 <= report["int8"]["accuracy"] <= 1.0
    assert 0.0 <= report["fp32"]["accuracy"] <= 1.0

    fp32 = load_classifier(trained.output_dir, base_weights, "openvino", tmp_path, precision="fp32")
    int8 = load_classifier(trained.output_dir, base_weights, "openvino", tmp_path, precision="int8")
    auto = load_classifier(trained.output_dir, base_weights, "openvino", tmp_path, precision="auto")
    quantized, full = int8.predict(batch), fp32.predict(batch)
    np.testing.assert_allclose(quantized.sum(axis=1), 1.0, rtol=1e-5)
    assert not np.array_equal(quantized, full)  # a different (quantized) network really ran
    chosen = int8 if report["accepted"] else fp32
    np.testing.assert_array_equal(auto.predict(batch), chosen.predict(batch))
