from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from shared.classifier.labels import CLASSES
from shared.errors import InvalidInput
from shared.training.dataset import (
    drop_duplicates,
    list_labelled_images,
    stratified_split,
    stratified_three_way,
)
from shared.training.features import content_hashes


def test_split_is_stratified_seeded_and_disjoint() -> None:
    labels = [0] * 100 + [1] * 50 + [2] * 11
    train, validation = stratified_split(labels, 0.2, seed=42)
    assert set(train).isdisjoint(validation)
    assert sorted(train + validation) == list(range(len(labels)))
    assert Counter(labels[i] for i in validation) == {0: 20, 1: 10, 2: 2}
    assert stratified_split(labels, 0.2, seed=42) == (train, validation)
    assert stratified_split(labels, 0.2, seed=7) != (train, validation)


def test_split_keeps_one_example_each_side_for_tiny_classes() -> None:
    train, validation = stratified_split([0, 0, 1, 1], 0.2, seed=1)
    assert len(train) == 2
    assert len(validation) == 2


def test_split_rejects_a_fraction_outside_0_1() -> None:
    with pytest.raises(InvalidInput, match="between 0 and 1"):
        stratified_split([0, 1], 1.0, seed=1)


def test_lists_class_folders_in_fixed_class_order(tmp_path: Path) -> None:
    for label in ("street", "forest"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "b.jpg").write_bytes(b"x")
        (tmp_path / label / "a.jpg").write_bytes(b"x")
        (tmp_path / label / ".DS_Store").write_bytes(b"x")
    images = list_labelled_images(tmp_path)
    assert [(i.name, CLASSES[i.label]) for i in images] == [
        ("forest/a.jpg", "forest"),
        ("forest/b.jpg", "forest"),
        ("street/a.jpg", "street"),
        ("street/b.jpg", "street"),
    ]


def test_unknown_class_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "forest").mkdir()
    (tmp_path / "desert").mkdir()
    with pytest.raises(InvalidInput, match=r"unknown class folder.*desert"):
        list_labelled_images(tmp_path)


def test_empty_folder_says_what_it_expected(tmp_path: Path) -> None:
    (tmp_path / "sea").mkdir()
    with pytest.raises(InvalidInput, match="no images"):
        list_labelled_images(tmp_path)


def test_duplicates_with_disagreeing_labels_go_entirely_and_agreeing_ones_keep_one(
    tmp_path: Path,
) -> None:
    files = {
        "buildings/a.jpg": b"same photo, two classes",
        "street/b.jpg": b"same photo, two classes",
        "forest/c.jpg": b"one photo, twice",
        "forest/d.jpg": b"one photo, twice",
        "sea/e.jpg": b"unique",
    }
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(data)
    images = list_labelled_images(tmp_path)
    kept, report = drop_duplicates(images, content_hashes([i.path for i in images]))
    assert sorted(images[i].name for i in kept) == ["forest/c.jpg", "sea/e.jpg"]
    assert report.conflicting == ["buildings/a.jpg", "street/b.jpg"]
    assert report.repeated == ["forest/d.jpg"]


def test_three_way_split_is_stratified_disjoint_and_seeded() -> None:
    labels = [0] * 200 + [1] * 100 + [2] * 40
    train, validation, test = stratified_three_way(labels, 0.15, 0.15, seed=42)
    # Together every position once: so no position is in two splits.
    assert sorted(train + validation + test) == list(range(len(labels)))
    assert Counter(labels[i] for i in test) == {0: 30, 1: 15, 2: 6}
    assert Counter(labels[i] for i in validation) == {0: 30, 1: 15, 2: 6}
    assert stratified_three_way(labels, 0.15, 0.15, seed=42) == (train, validation, test)
