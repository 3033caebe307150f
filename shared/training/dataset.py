"""Labelled image folders (one subfolder per class) and the seeded stratified split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.classifier.labels import CLASSES
from shared.errors import InvalidInput
from shared.training.features import content_hashes


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int  # index into CLASSES

    @property
    def name(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"


def list_labelled_images(root: Path) -> list[LabelledImage]:
    """Every non-hidden file under `root/<class>/`, sorted so the order is reproducible."""
    if not root.is_dir():
        raise InvalidInput(f"{str(root)!r} is not a folder of class subfolders")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in folders if p.name not in CLASSES]
    if unknown:
        raise InvalidInput(
            f"unknown class folder(s) {', '.join(unknown)} in {str(root)!r}; "
            f"expected some of: {', '.join(CLASSES)}"
        )
    images = [
        LabelledImage(path, CLASSES.index(folder.name))
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.name.startswith(".")
    ]
    if not images:
        raise InvalidInput(f"no images under {str(root)!r}; expected <class>/<image> files")
    return images


def stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, validation) with `fraction` of each class held out, seeded."""
    if not 0.0 < fraction < 1.0:
        raise InvalidInput(f"validation fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    label_array = np.asarray(labels)
    train: list[int] = []
    validation: list[int] = []
    for label in sorted(set(labels)):
        members = np.flatnonzero(label_array == label)
        rng.shuffle(members)
        n_val = round(len(members) * fraction)
        if len(members) > 1:
            n_val = min(max(n_val, 1), len(members) - 1)
        validation.extend(int(i) for i in members[:n_val])
        train.extend(int(i) for i in members[n_val:])
    return sorted(train), sorted(validation)


@dataclass(frozen=True)
class Deduplication:
    """What `drop_duplicates` removed, by image name."""

    conflicting: list[str]  # byte-identical copies filed under different classes: all dropped
    repeated: list[str]  # further copies under the same class: one of each kept

    def as_dict(self) -> dict[str, object]:
        return {
            "conflicting_dropped": len(self.conflicting),
            "repeated_dropped": len(self.repeated),
            "conflicting": self.conflicting,
            "repeated": self.repeated,
        }


def drop_duplicates(
    images: list[LabelledImage], hashes: list[str]
) -> tuple[list[int], Deduplication]:
    """Indices to keep: one of each set of identical copies; none where their labels disagree.

    A copy on both sides of a split would flatter validation; a photo filed under
    two classes teaches both and neither.
    """
    by_hash: dict[str, list[int]] = {}
    for index, digest in enumerate(hashes):
        by_hash.setdefault(digest, []).append(index)
    keep: list[int] = []
    conflicting: list[str] = []
    repeated: list[str] = []
    for members in by_hash.values():
        if len({images[i].label for i in members}) > 1:
            conflicting += [images[i].name for i in members]
            continue
        keep.append(members[0])
        repeated += [images[i].name for i in members[1:]]
    return sorted(keep), Deduplication(sorted(conflicting), sorted(repeated))


def stratified_three_way(
    labels: list[int], validation_fraction: float, test_fraction: float, seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Positions (train, validation, test) into `labels`, each class split alike, seeded."""
    rest, test = stratified_split(labels, test_fraction, seed)
    inner_fraction = validation_fraction / (1.0 - test_fraction)
    train_pos, val_pos = stratified_split([labels[i] for i in rest], inner_fraction, seed + 1)
    return [rest[i] for i in train_pos], [rest[i] for i in val_pos], test


@dataclass(frozen=True)
class SplitImages:
    """The images left after `drop_duplicates`, and positions into them for each split."""

    images: list[LabelledImage]
    hashes: list[str]  # sha256 of each image's bytes, in the same order
    deduplication: Deduplication
    train: list[int]
    validation: list[int]
    test: list[int]


def split_images(
    images: list[LabelledImage], validation_fraction: float, test_fraction: float, seed: int
) -> SplitImages:
    """Duplicates dropped, then the seeded stratified train / validation / test split: the
    one every fine-tuned recipe, the levers and `evaluate --holdout` reproduce."""
    hashes = content_hashes([image.path for image in images])
    kept, deduplication = drop_duplicates(images, hashes)
    images, hashes = [images[i] for i in kept], [hashes[i] for i in kept]
    train, validation, test = stratified_three_way(
        [image.label for image in images], validation_fraction, test_fraction, seed
    )
    return SplitImages(images, hashes, deduplication, train, validation, test)
