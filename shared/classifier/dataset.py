"""Labelled image folders (one subfolder per class) and the seeded stratified split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.classifier.labels import CLASSES
from shared.errors import InvalidInput


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
