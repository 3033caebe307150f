"""Fault: the upload storage fills up, then becomes read-only (a real, tiny tmpfs).

Proves that an upload the disk cannot hold is answered 507 (full) or 503
(unwritable) with a clear error, leaves no partial file, no job and no item,
and that the service takes uploads again as soon as there is room.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.processes import Service, running_api
from tests.conftest import image_bytes, zip_bytes

TMPFS_BYTES = 2 * 1024 * 1024


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Path]:
    mountpoint = tmp_path / "storage"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.fail(f"this test mounts a tmpfs and needs root: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.fixture
def service(storage: Path, tmp_path: Path) -> Iterator[Service]:
    with running_api(tmp_path, STORAGE_URL=storage.as_uri()) as service:
        yield service


def files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_full_then_read_only_storage(service: Service, storage: Path) -> None:
    # Real PNG headers are needed for intake to accept the entries as images.
    too_big = zip_bytes(
        {
            f"{i}.png": image_bytes(size=(300 + i, 300), colour=(i, 1, 2)) + os.urandom(150 * 1024)
            for i in range(20)
        }
    )
    with service.client() as client:
        full = client.post("/jobs", files={"file": ("big.zip", too_big)})
        assert full.status_code == 507, full.text
        assert full.json()["error"] == {
            "code": "storage_full",
            "message": "upload storage is full; try again later",
        }
        assert files_in(storage) == []  # no partial files, no half-stored job
        assert client.get("/jobs").json()["items"] == []

        small = client.post("/jobs", files={"file": ("one.png", image_bytes())})
        assert small.status_code == 202, small.text  # room again: the failed upload freed it

        subprocess.run(["mount", "-o", "remount,ro", str(storage)], check=True)
        read_only = client.post("/jobs", files={"file": ("two.png", image_bytes())})
        assert read_only.status_code == 503, read_only.text
        error = read_only.json()["error"]
        assert error["code"] == "storage_unavailable"
        assert "upload storage cannot be written" in error["message"]
        listed = [job["id"] for job in client.get("/jobs").json()["items"]]
    assert listed == [small.json()["id"]]
    assert [p.parent.name for p in files_in(storage)] == [small.json()["id"]]
