"""Upload storage: a local folder by default, an S3-compatible bucket for several machines.

Keys are made by the service (`<job id>/<item id>`); names from users are
never used as paths.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import struct
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urlparse
from urllib.request import url2pathname

from shared.errors import AppError, StorageFull, StorageUnavailable, UploadMissing

CHUNK = 1 << 20
# ext2/3/4's "top of directory hierarchy" flag (chattr +T), read and set by ioctl.
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000

log = logging.getLogger(__name__)


class Storage(Protocol):
    def put(self, key: str, stream: IO[bytes]) -> None: ...
    def get(self, key: str) -> bytes: ...
    def copy(self, source: str, target: str) -> None: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def prefixes(self) -> Iterator[tuple[str, datetime]]:
        """Each top-level prefix (a job id) and when anything under it last changed."""
        ...


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root
        # Resolved once: a worker touches storage twice an image, and resolving walks
        # the folders' every part with a system call each.
        self._resolved_root = root.resolve()
        self._spread = False  # whether the root's job folders are spread (`spread_subfolders`)

    def _path(self, key: str) -> Path:
        # Keys are ours (job and item ids): normalising catches a ".." without
        # the system calls `resolve` spends on each part of the path.
        path = Path(os.path.normpath(self._resolved_root / key))
        if not path.is_relative_to(self._resolved_root):
            raise ValueError(f"storage key {key!r} escapes the storage root")
        return path

    def put(self, key: str, stream: IO[bytes]) -> None:
        path = self._path(key)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        try:
            if not self._spread:
                self._resolved_root.mkdir(parents=True, exist_ok=True)
                self._spread = spread_subfolders(self._resolved_root)
            path.parent.mkdir(parents=True, exist_ok=True)
            with temporary.open("wb") as out:
                shutil.copyfileobj(stream, out, CHUNK)
            os.replace(temporary, path)  # readers never see a half-written file
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise _storage_error(exc) from exc

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise UploadMissing(f"stored upload {key!r} is gone") from exc

    def copy(self, source: str, target: str) -> None:
        try:
            with self._path(source).open("rb") as stream:
                self.put(target, stream)
        except FileNotFoundError as exc:
            raise UploadMissing(f"stored upload {source!r} is gone") from exc

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def prefixes(self) -> Iterator[tuple[str, datetime]]:
        if not self.root.is_dir():
            return
        for entry in os.scandir(self.root):
            # Adding or renaming a file updates its folder's mtime, so the folder's is the newest.
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                modified = entry.stat(follow_symlinks=False).st_mtime
                yield entry.name, datetime.fromtimestamp(modified, UTC)


def spread_subfolders(folder: Path) -> bool:
    """Have ext4 place each new job folder as it places top-level ones (`chattr +T`).

    Each image is a file written by the API and deleted by a worker minutes later.
    Without a journal, ext4 will not reuse an inode freed within the last 30 s or
    so, and every new file's inode is looked for by walking past each of them in
    its folder's block group: with the default placement every job folder shares
    the group of the uploads folder, and after a few thousand deletions each new
    file cost 0.3 to 0.9 ms of kernel CPU (measured here: 600 files in 130 to 540
    ms, against 18 ms with the flag). With it, each job folder starts in a group of
    its own choosing, away from the inodes freed by the jobs before it. Other
    filesystems have no such flag: nothing changes there. Returns True once tried.
    """
    if not folder.is_dir():
        return False
    try:
        flags = folder_flags(folder)
        if not flags & FS_TOPDIR_FL:
            set_folder_flags(folder, flags | FS_TOPDIR_FL)
    except OSError as exc:  # not ext2/3/4, or not ours to change: placement stays as it is
        log.debug("could not spread the folders of %s: %s", folder, exc)
    return True


def folder_flags(folder: Path) -> int:
    """A folder's inode flags (`lsattr -d`); OSError where the filesystem keeps none."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # The kernel reads and writes an int, whatever the request's declared size.
        return int(struct.unpack("i", fcntl.ioctl(descriptor, FS_IOC_GETFLAGS, bytes(8))[:4])[0])
    finally:
        os.close(descriptor)


def set_folder_flags(folder: Path, flags: int) -> None:
    """Set a folder's inode flags (`chattr`); OSError where the filesystem refuses."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(descriptor, FS_IOC_SETFLAGS, struct.pack("i", flags) + bytes(4))
    finally:
        os.close(descriptor)


def s3_client() -> Any:
    """A boto3 S3 client for the usual AWS_* variables, made once per process for each
    endpoint and key (clients are thread-safe, and slow to make)."""
    return _s3_client(
        os.environ.get("AWS_ENDPOINT_URL") or None, os.environ.get("AWS_ACCESS_KEY_ID")
    )


@lru_cache(maxsize=8)
def _s3_client(endpoint: str | None, _access_key: str | None) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint)


class S3Storage:
    """Any S3-compatible bucket; endpoint and credentials come from the usual AWS_* variables."""

    def __init__(self, bucket: str, prefix: str) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client: Any = s3_client()

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, stream: IO[bytes]) -> None:
        try:
            self.client.upload_fileobj(stream, self.bucket, self._key(key))
        except Exception as exc:
            raise StorageUnavailable(f"cannot write to the upload bucket: {exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey as exc:
            raise UploadMissing(f"stored upload {key!r} is gone") from exc
        return bytes(response["Body"].read())

    def copy(self, source: str, target: str) -> None:
        """Within the bucket, server-side: the bytes do not pass through this process."""
        origin = {"Bucket": self.bucket, "Key": self._key(source)}
        try:
            self.client.copy_object(Bucket=self.bucket, Key=self._key(target), CopySource=origin)
        except self.client.exceptions.NoSuchKey as exc:
            raise UploadMissing(f"stored upload {source!r} is gone") from exc
        except Exception as exc:
            raise StorageUnavailable(f"cannot write to the upload bucket: {exc}") from exc

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(
            Bucket=self.bucket, Prefix=self._key(prefix).rstrip("/") + "/"
        ):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.ClientError:
            return False
        return True

    def prefixes(self) -> Iterator[tuple[str, datetime]]:
        newest: dict[str, datetime] = {}
        root = f"{self.prefix}/" if self.prefix else ""
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=root
        ):
            for obj in page.get("Contents", []):
                top = obj["Key"][len(root) :].split("/", 1)[0]
                modified: datetime = obj["LastModified"]
                if top not in newest or modified > newest[top]:
                    newest[top] = modified
        yield from newest.items()


def open_storage(url: str) -> Storage:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStorage(Path(url2pathname(parsed.path)))
    if parsed.scheme == "s3":
        return S3Storage(parsed.netloc, parsed.path)
    raise ValueError(f"STORAGE_URL must be file:// or s3://, not {url!r}")


def _storage_error(exc: OSError) -> AppError:
    import errno

    if exc.errno in {errno.ENOSPC, errno.EDQUOT}:
        return StorageFull("upload storage is full; try again later")
    return StorageUnavailable(f"upload storage cannot be written: {exc.strerror}")
