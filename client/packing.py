"""Turn what a user points at (images, folders, zips) into the parts of one upload.

Zips go as they are. Folders and loose images are packed into one zip on the fly
(stored, not deflated: photos are compressed already), named by their path from
the folder given, so results read `holiday/beach/1.jpg`. One lone image goes as is.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
SPOOL_BYTES = 32 * 1024 * 1024


@dataclass
class Part:
    filename: str
    stream: IO[bytes]
    size: int


def is_zip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) in ZIP_MAGIC


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def pack(paths: list[Path]) -> list[Part]:
    """The multipart parts for `paths`; raises FileNotFoundError for a missing one."""
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
    zips = [p for p in paths if p.is_file() and is_zip(p)]
    loose = [p for p in paths if p.is_file() and p not in zips]
    folders = [p for p in paths if p.is_dir()]
    parts = [Part(p.name, p.open("rb"), p.stat().st_size) for p in zips]
    if len(loose) == 1 and not folders:
        parts.append(Part(loose[0].name, loose[0].open("rb"), loose[0].stat().st_size))
    elif loose or folders:
        parts.append(_zip_of(loose, folders))
    if not parts:
        raise FileNotFoundError("nothing to upload: the folders given are empty")
    return parts


def _zip_of(loose: list[Path], folders: list[Path]) -> Part:
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (returned)
    used: set[str] = set()
    with zipfile.ZipFile(spool, "w", zipfile.ZIP_STORED) as archive:
        entries = [(p, p.name) for p in loose]
        for folder in folders:
            base = folder.resolve().parent
            entries += [(p, p.resolve().relative_to(base).as_posix()) for p in _walk(folder)]
        for path, name in entries:
            archive.write(path, _unique(name, used))
    size = spool.tell()
    spool.seek(0)
    if not used:
        raise FileNotFoundError("nothing to upload: the folders given are empty")
    return Part("upload.zip", spool, size)


def _unique(name: str, used: set[str]) -> str:
    candidate, counter = name, 1
    while candidate in used:
        counter += 1
        stem, dot, suffix = name.rpartition(".")
        candidate = f"{stem}~{counter}.{suffix}" if dot else f"{name}~{counter}"
    used.add(candidate)
    return candidate
