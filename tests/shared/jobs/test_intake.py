"""Intake on its own: what a set of uploads becomes in storage, and what it refuses."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from shared.errors import InvalidInput, LimitExceeded, NoImages
from shared.jobs.intake import Upload, is_zip, stage_uploads, storage_prefix
from shared.settings import Settings
from shared.storage import LocalStorage
from tests.conftest import image_bytes, zip_bytes


def upload(name: str, data: bytes) -> Upload:
    return Upload(name, io.BytesIO(data))


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "uploads")


def stored_keys(storage: LocalStorage, job_id: str) -> list[str]:
    folder = storage.root / storage_prefix(job_id)
    return sorted(f"{job_id}/{p.name}" for p in folder.iterdir()) if folder.exists() else []


def test_each_image_of_a_zip_is_stored_under_its_job_and_the_rest_fail_alone(
    storage: LocalStorage,
) -> None:
    archive = zip_bytes(
        {"a.jpg": image_bytes(fmt="JPEG"), "notes.txt": b"not an image", "b.png": image_bytes()}
    )
    staged = stage_uploads([upload("photos.zip", archive)], "job-1", storage, Settings())
    assert [item.filename for item in staged] == ["a.jpg", "notes.txt", "b.png"]
    assert [item.position for item in staged] == [0, 1, 2]
    good = [item for item in staged if item.error is None]
    assert sorted(item.storage_key for item in good if item.storage_key) == stored_keys(
        storage, "job-1"
    )
    [text] = [item for item in staged if item.filename == "notes.txt"]
    assert text.storage_key is None
    assert text.error == "not an image"
    assert all(item.sha256 and len(item.sha256) == 64 for item in staged)


def test_an_upload_with_no_image_stores_nothing(storage: LocalStorage) -> None:
    archive = zip_bytes({"a.txt": b"one", "b.txt": b"two"})
    with pytest.raises(NoImages, match="no images"):
        stage_uploads([upload("texts.zip", archive)], "job-2", storage, Settings())
    assert stored_keys(storage, "job-2") == []


def test_past_the_image_limit_what_was_stored_is_removed(storage: LocalStorage) -> None:
    images = [upload(f"{i}.png", image_bytes()) for i in range(3)]
    with pytest.raises(LimitExceeded, match="MAX_IMAGES_PER_JOB"):
        stage_uploads(images, "job-3", storage, Settings(max_images_per_job=2))
    assert stored_keys(storage, "job-3") == []


def test_no_upload_is_refused(storage: LocalStorage) -> None:
    with pytest.raises(InvalidInput, match="no file uploaded"):
        stage_uploads([], "job-4", storage, Settings())


def test_a_zip_is_known_by_its_bytes_and_the_stream_is_rewound() -> None:
    archive = upload("photos.jpg", zip_bytes({"a.png": image_bytes()}))  # the name lies
    assert is_zip(archive)
    assert archive.stream.tell() == 0
    image = upload("a.zip", image_bytes())
    assert not is_zip(image)
    assert image.stream.tell() == 0
