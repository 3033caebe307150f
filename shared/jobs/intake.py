"""Turn uploaded files (images and zips) into stored item blobs, enforcing every limit.

Nothing here trusts a name or a declared size: zip entries are named by the
service in storage, declared sizes are checked against what is actually read,
and an entry that is not an image becomes a failed item rather than failing
the request.
"""

from __future__ import annotations

import hashlib
import io
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from shared.classifier.preprocessing import ACCEPTED_FORMAT_NAMES, header_pixels
from shared.classifier.sources import is_hidden
from shared.db.models import new_id
from shared.errors import (
    AppError,
    ImageTooLarge,
    InvalidInput,
    LimitExceeded,
    NoImages,
    UnsupportedMediaType,
    describe,
)
from shared.jobs.zip_directory import open_archive
from shared.settings import Settings
from shared.storage import Storage
from shared.text_rules import label_text

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# Below this, a high compression ratio is ordinary (a blank image, a text file).
RATIO_FLOOR_BYTES = 1024 * 1024
# A central-directory record is 46 bytes plus the name, extra field and comment.
DIRECTORY_BYTES_PER_ENTRY = 1024
# General-purpose flag bit 0: the entry is encrypted (zipfile would ask for a password).
ENCRYPTED_FLAG = 0x1


@dataclass(frozen=True)
class Upload:
    filename: str
    stream: IO[bytes]  # seekable: a spooled temporary file


@dataclass(frozen=True)
class StagedItem:
    id: str
    position: int
    filename: str
    size_bytes: int
    sha256: str | None
    storage_key: str | None  # None when the item failed at intake, or comes by reference
    error: str | None
    source_url: str | None = None  # an input by reference: where a worker fetches it
    custom_id: str | None = None  # the caller's id; the file (zip entry) name by default


def storage_prefix(job_id: str) -> str:
    """Every stored file of a job lives under its id, so deleting a job is one prefix."""
    return job_id


def is_zip(upload: Upload) -> bool:
    """Whether the upload is a zip archive, by its first bytes (the stream is rewound)."""
    head = upload.stream.read(8)
    upload.stream.seek(0)
    return head.startswith(ZIP_MAGIC)


def stage_uploads(
    uploads: list[Upload], job_id: str, storage: Storage, settings: Settings
) -> list[StagedItem]:
    """Store every image of `uploads`; on any refusal, remove what was stored and raise."""
    if not uploads:
        raise InvalidInput("no file uploaded")
    staged: list[StagedItem] = []
    try:
        for upload in uploads:
            for filename, data, error in _expand(upload, settings):
                if len(staged) >= settings.max_images_per_job:
                    raise LimitExceeded(
                        f"more than {settings.max_images_per_job:,} files in one job "
                        "(MAX_IMAGES_PER_JOB)"
                    )
                name = label_text(filename)  # kept for display; NUL cannot be stored
                staged.append(_stage(job_id, len(staged), name, data, error, storage))
        if not any(item.error is None for item in staged):
            raise NoImages("the upload contains no images: " + _first_errors(staged))
    except BaseException:
        storage.delete_prefix(storage_prefix(job_id))
        raise
    return staged


def _stage(
    job_id: str, position: int, filename: str, data: bytes, error: str | None, storage: Storage
) -> StagedItem:
    item_id = new_id()
    digest = hashlib.sha256(data).hexdigest()
    if error is not None:
        return StagedItem(item_id, position, filename, len(data), digest, None, error)
    key = f"{storage_prefix(job_id)}/{item_id}"
    storage.put(key, io.BytesIO(data))
    return StagedItem(item_id, position, filename, len(data), digest, key, None)


def _expand(upload: Upload, settings: Settings) -> Iterator[tuple[str, bytes, str | None]]:
    """(name, bytes, intake error) for each file an upload holds."""
    head = upload.stream.read(8)
    upload.stream.seek(0)
    if head.startswith(ZIP_MAGIC):
        yield from _expand_zip(upload, settings)
        return
    data = _read_limited(upload.stream, settings.max_image_bytes, upload.filename)
    if not data:
        raise InvalidInput(f"{upload.filename!r} is an empty file (0 bytes)")
    pixels = header_pixels(data)
    if pixels is None:
        raise UnsupportedMediaType(
            f"{upload.filename!r} is neither an image nor a .zip archive "
            f"(send {ACCEPTED_FORMAT_NAMES} images, or a zip of them)"
        )
    if pixels > settings.max_image_pixels:
        raise ImageTooLarge(upload.filename, pixels, settings.max_image_pixels)
    yield upload.filename, data, None


def _check_expansion(upload: Upload, members: list[zipfile.ZipInfo], settings: Settings) -> None:
    """The whole archive's expansion: what is written to storage is bounded by what was sent."""
    declared = sum(e.file_size for e in members)
    if declared > settings.max_zip_uncompressed_bytes:
        raise LimitExceeded(
            f"{upload.filename!r} expands to {declared:,} bytes, over the limit of "
            f"{settings.max_zip_uncompressed_bytes:,} (MAX_ZIP_UNCOMPRESSED_BYTES)"
        )
    compressed = sum(e.compress_size for e in members)
    ratio = declared / max(compressed, 1)
    if declared > RATIO_FLOOR_BYTES and ratio > settings.max_zip_ratio:
        raise LimitExceeded(
            f"{upload.filename!r} expands {ratio:,.0f}:1 as a whole ({compressed:,} bytes to "
            f"{declared:,}), over the limit of {settings.max_zip_ratio:,.0f}:1 (MAX_ZIP_RATIO); "
            "this looks like a zip bomb"
        )
    for entry in members:
        ratio = entry.file_size / max(entry.compress_size, 1)
        if entry.file_size > RATIO_FLOOR_BYTES and ratio > settings.max_zip_ratio:
            raise LimitExceeded(
                f"{upload.filename!r}: entry {entry.filename!r} is compressed {ratio:,.0f}:1, "
                f"over the limit of {settings.max_zip_ratio:,.0f}:1 (MAX_ZIP_RATIO); "
                "this looks like a zip bomb"
            )


def _open_zip(upload: Upload, settings: Settings) -> zipfile.ZipFile:
    """The archive, its directory bounded by MAX_ZIP_ENTRIES while zipfile reads it."""
    try:
        return open_archive(
            upload.stream,
            upload.filename,
            max_entries=settings.max_zip_entries,
            max_directory_bytes=settings.max_zip_entries * DIRECTORY_BYTES_PER_ENTRY,
        )
    except AppError:
        raise
    # zipfile raises what its parser trips on: BadZipFile, NotImplementedError (a
    # newer version), UnicodeDecodeError (a name flagged UTF-8 that is not), ...
    except Exception as exc:
        raise InvalidInput(
            f"{upload.filename!r} is not a readable zip archive: {describe(exc)}"
        ) from exc


def _expand_zip(upload: Upload, settings: Settings) -> Iterator[tuple[str, bytes, str | None]]:
    with _open_zip(upload, settings) as archive:
        entries = archive.infolist()
        # Hidden files are skipped quietly, but a `..` path is reported, not skipped.
        members = [
            e
            for e in entries
            if not e.is_dir() and (not is_hidden(e.filename) or _climbs(e.filename))
        ]
        _check_expansion(upload, members, settings)
        seen: set[str] = set()
        for entry in members:
            refusal = entry_refusal(entry, seen)
            seen.add(entry.filename)
            if refusal is not None:
                yield entry.filename, b"", refusal
            else:
                yield _read_entry(archive, entry, settings)


def _climbs(name: str) -> bool:
    return ".." in name.replace("\\", "/").split("/")


def entry_refusal(entry: zipfile.ZipInfo, seen: set[str]) -> str | None:
    """Why an entry is not extracted at all, judged from its header alone.

    Names are never used as paths here, but an archive that carries absolute
    paths, `..` or links was made to attack an unzipper; its entries fail alone.
    """
    name = entry.filename
    if label_text(name) != name:
        return "unsafe entry name: control characters are not extracted"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "unsafe entry name: absolute paths are not extracted"
    if _climbs(name):
        return "unsafe entry name: '..' is not extracted"
    if stat.S_ISLNK(entry.external_attr >> 16):
        return "symbolic link: links in archives are not followed"
    if entry.flag_bits & ENCRYPTED_FLAG:
        return "encrypted: password-protected entries are not extracted"
    if name in seen:
        return "duplicate entry name: only the first entry with this name is classified"
    return None


def _read_entry(
    archive: zipfile.ZipFile, entry: zipfile.ZipInfo, settings: Settings
) -> tuple[str, bytes, str | None]:
    name = entry.filename
    if entry.file_size > settings.max_image_bytes:
        return (
            name,
            b"",
            (
                f"{entry.file_size:,} bytes, over the limit of {settings.max_image_bytes:,} "
                "per image (MAX_IMAGE_BYTES)"
            ),
        )
    try:
        with archive.open(entry) as stream:
            data = stream.read(entry.file_size + 1)
    # The decompressors raise their own types (zlib.error, EOFError, LZMAError, ...):
    # whatever it is, this entry cannot be extracted, and it fails alone.
    except Exception as exc:
        return name, b"", f"cannot extract from the zip: {describe(exc)}"
    if len(data) > entry.file_size:
        raise LimitExceeded(f"zip entry {name!r} is larger than its header declares (zip bomb)")
    return name, data, _entry_problem(data, name, settings)


def _entry_problem(data: bytes, name: str, settings: Settings) -> str | None:
    if not data:
        return "an empty file (0 bytes)"
    pixels = header_pixels(data)
    if pixels is None:
        if data[:4] in ZIP_MAGIC:
            return "not an image (archives inside the archive are not extracted)"
        return "not an image"
    if pixels > settings.max_image_pixels:
        return ImageTooLarge(name, pixels, settings.max_image_pixels).message
    return None


def _read_limited(stream: IO[bytes], limit: int, name: str) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise LimitExceeded(
            f"{name!r} is over the limit of {limit:,} bytes per image (MAX_IMAGE_BYTES)"
        )
    return data


def _first_errors(staged: list[StagedItem]) -> str:
    if not staged:
        return "the archive holds no files"
    shown = "; ".join(f"{item.filename}: {item.error}" for item in staged[:3])
    return shown + (f" (and {len(staged) - 3} more)" if len(staged) > 3 else "")
