"""Expand command-line paths (files, folders, zip archives) into named image bytes."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from shared.errors import InvalidInput


def is_hidden(name: str) -> bool:
    """Dotfiles and macOS resource forks: never images a user meant to send."""
    parts = PurePosixPath(name).parts
    return any(part.startswith(".") for part in parts) or (bool(parts) and parts[0] == "__MACOSX")


def zip_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The file entries a user meant: directories walked, hidden files and __MACOSX skipped."""
    return [
        info for info in archive.infolist() if not info.is_dir() and not is_hidden(info.filename)
    ]


def iter_sources(paths: list[Path]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) for every file under `paths`; a zip's entries are named `archive.zip/inner`."""
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                relative = child.relative_to(path).as_posix()
                if child.is_file() and not is_hidden(relative):
                    yield from _file_sources(child)
        elif path.is_file():
            yield from _file_sources(path)
        else:
            raise InvalidInput(f"{str(path)!r} does not exist")


def count_sources(paths: list[Path]) -> int:
    """How many items `iter_sources` will yield, without reading image bytes."""
    total = 0
    for path in paths:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if path.is_dir() and is_hidden(file.relative_to(path).as_posix()):
                continue
            if zipfile.is_zipfile(file) and file.suffix.lower() == ".zip":
                with zipfile.ZipFile(file) as archive:
                    total += len(zip_members(archive))
            else:
                total += 1
    return total


def _file_sources(path: Path) -> Iterator[tuple[str, bytes]]:
    if path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in zip_members(archive):
                yield f"{path}/{info.filename}", archive.read(info)
    else:
        yield str(path), path.read_bytes()
