"""Model v2 made end to end on a sample, at Xception's smallest input (the real network)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from shared.classifier import artifact
from shared.classifier.model import load_classifier
from shared.classifier.network import Network
from shared.classifier.preprocessing import preprocess
from shared.training.config import FineTuneConfig, ReleaseConfig
from shared.training.dataset import list_labelled_images
from shared.training.release import ReleaseResult, release
from tests.conftest import sample_dataset

pytestmark = pytest.mark.model

SIZE = 71


@pytest.fixture(scope="module")
def dataset(train_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = sample_dataset(train_dir, tmp_path_factory.mktemp("data"), per_class=7, offset=20)
    # A photo filed under two classes, and a plain repeat: both must be dropped.
    sea = sorted((data / "sea").iterdir())[0]
    shutil.copy(sea, data / "forest" / "also-sea.jpg")
    forest = sorted((data / "forest").iterdir())[1]
    shutil.copy(forest, data / "forest" / "again.jpg")
    return data


@pytest.fixture(scope="module")
def released(
    dataset: Path, base_weights: str, tmp_path_factory: pytest.TempPathFactory
) -> ReleaseResult:
    return release(
        dataset,
        tmp_path_factory.mktemp("model"),
        ReleaseConfig(
            input_size=SIZE,
            calibration_images=12,
            finetune=FineTuneConfig(epochs=2, batch_size=8),  # v2's recipe: block 14 alone
        ),
        base_weights=base_weights,
        cache_dir=tmp_path_factory.mktemp("cache"),
    )


def test_duplicates_are_dropped_before_the_split(released: ReleaseResult) -> None:
    dropped = released.metrics["deduplication"]
    assert dropped["conflicting_dropped"] == 2  # both copies of the photo with two labels
    assert dropped["repeated_dropped"] == 1
    images = released.manifest.training["images"]
    assert images["found"] == 44
    assert images["train"] + images["validation"] + images["test"] == 44 - 3


def test_only_block_14s_convolutions_and_the_head_learn(
    released: ReleaseResult, base_weights: str, tmp_path: Path
) -> None:
    fresh = Network(base_weights, SIZE, 100, 0.2)
    fresh.save_top(tmp_path / "imagenet.weights.h5")

    def arrays(path: Path) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with h5py.File(path) as stored:
            stored.visititems(
                lambda name, node: (
                    found.__setitem__(name, node[()]) if isinstance(node, h5py.Dataset) else None
                )
            )
        return found

    before = arrays(tmp_path / "imagenet.weights.h5")
    after = arrays(released.output_dir / artifact.TOP_WEIGHTS_NAME)
    assert before.keys() == after.keys()
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    # Keras names the saved layers by class: block 14's two separable convolutions,
    # its two batch norms, and the head's two dense layers.
    assert {name.split("/vars/")[0] for name in changed} == {
        "layers/separable_conv2d",
        "layers/separable_conv2d_1",
        "layers/functional/layers/dense",
        "layers/functional/layers/dense_1",
    }  # the batch-norm statistics stay ImageNet's


def test_the_folder_serves_its_ir_and_names_weights_and_precision(
    released: ReleaseResult, dataset: Path, base_weights: str, tmp_path: Path
) -> None:
    folder = released.output_dir
    manifest = artifact.read_any_manifest(folder)
    assert isinstance(manifest, artifact.FineTunedManifest)
    acceptance = manifest.serving.acceptance
    assert {"fp32_accuracy", "int8_accuracy", "agreement", "accepted"} <= acceptance.keys()
    expected = "int8" if acceptance["accepted"] else "fp32"
    assert manifest.serving.precision == expected
    assert (folder / "model.xml").is_file()
    assert (folder / "model.bin").is_file()
    assert manifest.temperature > 0
    metrics = json.loads((folder / "metrics.json").read_text())
    calibration = metrics["calibration"]
    assert calibration["validation_nll_after"] <= calibration["validation_nll_before"] + 1e-6

    images = list_labelled_images(dataset)[::9]
    batch = np.stack([preprocess(i.path.read_bytes(), i.name, SIZE, 10**8) for i in images])
    served = load_classifier(folder, "none", "openvino", tmp_path, precision="auto")
    reference = load_classifier(folder, base_weights, "openvino", tmp_path, precision="fp32")
    assert served.network is None  # the IR alone: no Keras network was built
    assert served.version == manifest.version_for(expected)
    assert reference.version == manifest.version_for("fp32")
    probabilities = served.predict(batch)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    if expected == "fp32":
        np.testing.assert_allclose(probabilities, reference.predict(batch), atol=1e-4)


def test_a_recipe_from_block_13_with_the_regularisers_ships_and_its_reference_loads(
    dataset: Path, base_weights: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tuning = FineTuneConfig(
        epochs=1, batch_size=8, first_block=13, label_smoothing=0.1, mixup_alpha=0.2, ema_decay=0.9
    )
    result = release(
        dataset,
        tmp_path_factory.mktemp("model13"),
        ReleaseConfig(input_size=SIZE, calibration_images=12, finetune=tuning),
        base_weights=base_weights,
        cache_dir=tmp_path_factory.mktemp("cache13"),
    )
    manifest = artifact.read_any_manifest(result.output_dir)
    assert isinstance(manifest, artifact.FineTunedManifest)
    assert manifest.first_block == 13
    assert manifest.training["recipe"] == "fine-tune blocks 13 and 14 + head on cached add_10 maps"
    assert manifest.training["ema_decay"] == 0.9
    # The fp32 reference rebuilds the network from block 13: block 14's weights alone
    # would not load into it.
    reference = load_classifier(
        result.output_dir, base_weights, "openvino", tmp_path_factory.mktemp("c"), precision="fp32"
    )
    images = list_labelled_images(dataset)[::11]
    batch = np.stack([preprocess(i.path.read_bytes(), i.name, SIZE, 10**8) for i in images])
    np.testing.assert_allclose(reference.predict(batch).sum(axis=1), 1.0, rtol=1e-5)
