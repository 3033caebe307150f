"""Base-network outputs for training, cached on disk so the frozen part runs once per image.

Two kinds are cached: the pooled features (2048 floats) the frozen-base recipe
trains its head on, and the maps of `add_11` (10x10x1024, stored as float16)
that fine-tuning block 14 starts from. The cache is split into chunks whose key
hashes the bytes of every image in the chunk, the layer, the input size, the
preprocessing version, the base weights' identity and the augmentation view,
so a changed image, size or base recomputes only what it touches and an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from shared.classifier.engine import Engine
from shared.classifier.inference import infer_batches
from shared.classifier.network import FEATURE_DIM
from shared.classifier.preprocessing import PREPROCESSING_VERSION, open_image, resize, scale_pixels
from shared.training.augment import Augmentation

CHUNK_SIZE = 256
CACHE_FORMAT = 2


@dataclass(frozen=True)
class FeatureSpec:
    input_size: int
    base_identity: str
    view: int = 0  # 0 is the plain image; each further view is one random augmentation
    augmentation: Augmentation | None = None
    seed: int = 0
    layer: str = "avg_pool"  # the network's output: pooled features, or add_11's maps
    shape: tuple[int, ...] = (FEATURE_DIM,)
    dtype: str = "float32"


@dataclass
class FeatureSet:
    features: np.ndarray  # (n, *spec.shape) of spec.dtype; zeros where unreadable
    readable: np.ndarray  # (n,) bool
    computed: int  # images that went through the network (cache misses)


def content_hashes(paths: list[Path]) -> list[str]:
    return [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]


def compute_features(
    paths: list[Path],
    hashes: list[str],
    spec: FeatureSpec,
    *,
    engine: Callable[[], Engine],
    cache_dir: Path,
    batch_size: int,
    max_pixels: int,
    workers: int = 2,
    on_progress: Callable[[int], None] | None = None,
) -> FeatureSet:
    """Features for each path; `engine` is only called (to build the network) on a cache miss."""
    folder = cache_dir / "features"
    folder.mkdir(parents=True, exist_ok=True)
    feature_chunks: list[np.ndarray] = []
    readable_chunks: list[np.ndarray] = []
    built: Engine | None = None
    computed = 0
    for start in range(0, len(paths), CHUNK_SIZE):
        chunk_paths = paths[start : start + CHUNK_SIZE]
        chunk_hashes = hashes[start : start + CHUNK_SIZE]
        cache_file = folder / f"{_chunk_key(chunk_hashes, spec)}.npz"
        if cache_file.is_file():
            with np.load(cache_file) as stored:
                features, readable = stored["features"], stored["readable"]
        else:
            built = built or engine()
            features, readable = _run_chunk(
                chunk_paths, chunk_hashes, spec, built, batch_size, max_pixels, workers
            )
            _save_atomically(cache_file, features, readable)
            computed += len(chunk_paths)
        feature_chunks.append(features)
        readable_chunks.append(readable)
        if on_progress:
            on_progress(len(chunk_paths))
    return FeatureSet(np.concatenate(feature_chunks), np.concatenate(readable_chunks), computed)


def _chunk_key(hashes: list[str], spec: FeatureSpec) -> str:
    description = {
        "format": CACHE_FORMAT,
        "input_size": spec.input_size,
        "preprocessing": PREPROCESSING_VERSION,
        "layer": spec.layer,
        "dtype": spec.dtype,
        "base": spec.base_identity,
        "view": spec.view,
        "augmentation": asdict(spec.augmentation) if spec.view and spec.augmentation else None,
        "seed": spec.seed if spec.view else None,
        "images": hashes,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def _run_chunk(
    paths: list[Path],
    hashes: list[str],
    spec: FeatureSpec,
    engine: Engine,
    batch_size: int,
    max_pixels: int,
    workers: int,
) -> tuple[np.ndarray, np.ndarray]:
    def decode(item: tuple[Path, str]) -> np.ndarray:
        path, digest = item
        image = open_image(path.read_bytes(), str(path), max_pixels)
        if spec.view and spec.augmentation:
            # Seeded by content, so a view is the same augmentation on every run.
            rng = np.random.default_rng([spec.seed, spec.view, int(digest[:15], 16)])
            image = spec.augmentation.apply(image, rng)
        return scale_pixels(np.asarray(resize(image, spec.input_size)))

    rows: list[np.ndarray] = []
    readable: list[bool] = []
    pairs = zip(paths, hashes, strict=True)
    for batch in infer_batches(pairs, decode, engine, batch_size=batch_size, workers=workers):
        for output in batch.outputs:
            if isinstance(output, str):
                readable.append(False)
                rows.append(np.zeros(spec.shape, spec.dtype))
            else:
                readable.append(True)
                rows.append(np.asarray(output, dtype=spec.dtype))
    return np.stack(rows), np.asarray(readable, dtype=bool)


def _save_atomically(path: Path, features: np.ndarray, readable: np.ndarray) -> None:
    temporary = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(temporary, features=features, readable=readable)
    os.replace(temporary, path)
