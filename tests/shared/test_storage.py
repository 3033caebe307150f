"""Upload storage, local and S3 (against a real S3-compatible server, moto, on loopback)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from shared.errors import UploadMissing
from shared.storage import (
    FS_TOPDIR_FL,
    LocalStorage,
    S3Storage,
    Storage,
    folder_flags,
    open_storage,
    set_folder_flags,
    spread_subfolders,
)
from testkit.processes import free_port, running_api
from tests.conftest import image_bytes, zip_bytes

BUCKET = "intel-uploads"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    yield endpoint
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    return env


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return open_storage(tmp_path.as_uri())
    request.getfixturevalue("s3_env")
    return open_storage(f"s3://{BUCKET}/prefix-{tmp_path.name}")


def test_put_get_delete(storage: Storage) -> None:
    storage.put("job1/a", io.BytesIO(b"alpha"))
    storage.put("job1/b", io.BytesIO(b"beta"))
    storage.put("job2/c", io.BytesIO(b"gamma"))
    assert storage.get("job1/a") == b"alpha"
    assert storage.exists("job1/b")
    storage.delete("job1/a")
    assert not storage.exists("job1/a")
    with pytest.raises(UploadMissing, match="job1/a"):
        storage.get("job1/a")
    storage.delete_prefix("job1")
    assert not storage.exists("job1/b")
    assert storage.get("job2/c") == b"gamma"


def test_copy_leaves_the_source_and_refuses_a_missing_one(storage: Storage) -> None:
    storage.put("job1/a", io.BytesIO(b"photo"))
    storage.copy("job1/a", "job2/a")
    storage.delete_prefix("job1")
    assert storage.get("job2/a") == b"photo"  # the copy outlives its source's job
    with pytest.raises(UploadMissing):
        storage.copy("job1/a", "job3/a")


def test_open_storage_picks_the_backend(tmp_path: Path, s3_env: dict[str, str]) -> None:
    assert isinstance(open_storage(tmp_path.as_uri()), LocalStorage)
    s3 = open_storage(f"s3://{BUCKET}/some/prefix")
    assert isinstance(s3, S3Storage)
    assert (s3.bucket, s3.prefix) == (BUCKET, "some/prefix")
    with pytest.raises(ValueError, match="file:// or s3://"):
        open_storage("ftp://host/path")


def test_local_keys_cannot_escape_the_root(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "root")
    with pytest.raises(ValueError, match="escapes"):
        storage.put("../outside", io.BytesIO(b"x"))


def test_local_job_folders_are_spread_over_the_disk_where_ext4_can(tmp_path: Path) -> None:
    # Without a journal, ext4 walks past every inode freed in the last half minute in
    # a folder's block group to create a file there; spread, each job's folder starts
    # away from the files the jobs before it deleted (`spread_subfolders`).
    storage = LocalStorage(tmp_path / "uploads")
    storage.put("job/item", io.BytesIO(b"x"))
    assert storage.get("job/item") == b"x"
    if _keeps_the_flag(tmp_path / "probe"):  # ext2/3/4, as on the machines here
        assert folder_flags(tmp_path / "uploads") & FS_TOPDIR_FL
    assert not spread_subfolders(tmp_path / "missing")  # nothing to spread: no error


def _keeps_the_flag(folder: Path) -> bool:
    folder.mkdir()
    try:
        set_folder_flags(folder, FS_TOPDIR_FL)
    except OSError:
        return False
    return bool(folder_flags(folder) & FS_TOPDIR_FL)


def test_api_stores_uploads_in_the_bucket(s3_env: dict[str, str], tmp_path: Path) -> None:
    with running_api(tmp_path, STORAGE_URL=f"s3://{BUCKET}/service", **s3_env) as service:
        jpeg = image_bytes(size=(32, 32), fmt="JPEG")
        archive = zip_bytes({"a.jpg": jpeg, "b.jpg": jpeg})
        job = httpx.post(f"{service.url}/jobs", files={"file": ("two.zip", archive)}).json()
        client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
        listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"service/{job['id']}/")
        assert len(listed.get("Contents", [])) == 2
        assert httpx.delete(f"{service.url}/jobs/{job['id']}").status_code == 204
        listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"service/{job['id']}/")
        assert listed.get("KeyCount") == 0
