"""Test-wide fixtures: where ../shared lives, settings pointed at it, and synthetic images."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from shared.settings import get_settings
from testkit.resources import (
    BASE_WEIGHTS_FILE,
    SHARED_DIR,
    TEST_REDIS_URL,
    TRAIN_DIR,
    fresh_postgres_database,
)

__all__ = ["SHARED_DIR", "fresh_postgres_database"]  # re-exported for the test modules


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True, scope="session")
def _test_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point the model at ../shared's weights and keep caches out of the user's home."""
    os.environ.setdefault("BASE_WEIGHTS", str(BASE_WEIGHTS_FILE))
    os.environ["CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def base_weights() -> str:
    """The real ImageNet weights; their absence is a broken checkout, not a reason to skip."""
    if not BASE_WEIGHTS_FILE.is_file():
        pytest.fail(f"base weights not found at {BASE_WEIGHTS_FILE}; set INTEL_SHARED_DIR")
    return str(BASE_WEIGHTS_FILE)


@pytest.fixture(scope="session")
def stand_in_model() -> Path:
    """A model of a set pace for tests of the plumbing around it (`testkit.stand_in`).

    Outside /tmp, so that the cluster test's hosts (each with its own /tmp) see it."""
    import shutil

    from shared.settings import PROJECT_ROOT
    from testkit.stand_in import build_stand_in

    folder = PROJECT_ROOT / "test-artifacts" / "stand-in-model"
    shutil.rmtree(folder, ignore_errors=True)
    return build_stand_in(folder)


@pytest.fixture(scope="session")
def train_dir() -> Path:
    if not TRAIN_DIR.is_dir():
        pytest.fail(f"training images not found at {TRAIN_DIR}; set INTEL_SHARED_DIR")
    return TRAIN_DIR


def image_bytes(
    mode: str = "RGB",
    size: tuple[int, int] = (64, 48),
    fmt: str = "PNG",
    colour: float | tuple[int, ...] | None = None,
) -> bytes:
    image = Image.new(mode, size, colour if colour is not None else 0)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def sample_dataset(source: Path, target: Path, per_class: int, offset: int = 0) -> Path:
    """Link `per_class` real images of each class from `source` into `target/<class>/`."""
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (target / folder.name).mkdir(parents=True, exist_ok=True)
        for path in sorted(folder.iterdir())[offset : offset + per_class]:
            (target / folder.name / path.name).symlink_to(path)
    return target


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis database, emptied; its absence fails the run."""
    import redis

    try:
        redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=5).flushdb()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is required at {TEST_REDIS_URL}: {exc}")
    return TEST_REDIS_URL


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            # A fixed time: by default each entry is stamped with the clock (2 s steps),
            # so two calls a moment apart could make different bytes.
            entry = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            archive.writestr(entry, data, compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def holdout_sample(train_dir: Path, per_class: int) -> list[Any]:
    """`per_class` images of each class that the shipped model never trained on."""
    from shared.classifier import artifact
    from shared.settings import DEFAULT_MODEL_PATH
    from shared.training.dataset import list_labelled_images
    from shared.training.evaluation import select_holdout

    manifest = artifact.read_any_manifest(DEFAULT_MODEL_PATH)
    chosen: list[Any] = []
    for image in select_holdout(list_labelled_images(train_dir), manifest):
        if sum(c.label == image.label for c in chosen) < per_class:
            chosen.append(image)
    return chosen


@pytest.fixture(scope="session")
def keyed_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    """`serve` on embedded defaults with AUTH_ENABLED, and a key: what a user runs locally."""

    from testkit.processes import Service, free_port, service_env

    data_dir = tmp_path_factory.mktemp("keyed")
    service = Service(service_env(data_dir, AUTH_ENABLED="true"), data_dir, free_port())
    service.migrate()
    key = service.new_key("tests")
    try:
        service.start_serve()
        yield service, key
    finally:
        service.stop()
