"""Open a zip whose central directory is bounded while it is read, whatever its end records say.

`zipfile` finds the central directory from the end records, reads all of it in
one call and makes a `ZipInfo` for every record in it: a directory of millions
of tiny records is gigabytes of Python objects. Judging the archive from the
end records beforehand cannot work, because a crafted archive carries end
records that disagree with each other and with the directory (a zip64 locator
naming a decoy record, a signature inside the record), and a second reader of
them may pick a different one than `zipfile` does.

So there is one reader, `zipfile`'s own, with two bounds on it while it reads:
any one read may take at most `max_directory_bytes` (the directory arrives in
one read), and the entry list refuses its `max_entries + 1`-th entry, so
parsing stops at the limit. The directory `zipfile` reads is the one judged.
"""

from __future__ import annotations

import zipfile
from typing import IO

from shared.errors import LimitExceeded

# zipfile reads the end record's tail (up to 64 KiB of comment) in one call too.
_END_RECORDS_BYTES = (1 << 16) + 22 + 20 + 56


class _CappedReads:
    """A seekable stream whose single reads are refused past `cap` bytes (None: no cap)."""

    def __init__(self, stream: IO[bytes], refusal: str) -> None:
        self.stream = stream
        self.refusal = refusal
        self.cap: int | None = None

    def read(self, size: int | None = -1) -> bytes:
        if self.cap is not None:
            position = self.stream.tell()
            remaining = self.stream.seek(0, 2) - position
            self.stream.seek(position)
            wanted = remaining if size is None or size < 0 else min(size, remaining)
            if wanted > self.cap:
                raise LimitExceeded(self.refusal.format(size=wanted))
        return self.stream.read(-1 if size is None else size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.stream.seek(offset, whence)

    def tell(self) -> int:
        return self.stream.tell()

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        pass  # the upload's stream belongs to the request


class _CountedEntries(list[zipfile.ZipInfo]):
    """The entry list `zipfile` appends to as it parses: refuses the entry past the limit."""

    def __init__(self, limit: int, refusal: str) -> None:
        super().__init__()
        self.limit = limit
        self.refusal = refusal

    def append(self, entry: zipfile.ZipInfo) -> None:
        if len(self) >= self.limit:
            raise LimitExceeded(self.refusal)
        super().append(entry)


class _BoundedZipFile(zipfile.ZipFile):
    def __init__(self, stream: _CappedReads, entries: _CountedEntries, directory_cap: int) -> None:
        self._bounds = (stream, entries, directory_cap)
        super().__init__(stream)  # duck-typed like any file object

    def _RealGetContents(self) -> None:  # noqa: N802  (zipfile's name)
        stream, entries, directory_cap = self._bounds
        self.filelist = entries
        stream.cap = max(directory_cap, _END_RECORDS_BYTES)
        try:
            super()._RealGetContents()  # type: ignore[misc]  # private, not in the stubs
        finally:
            stream.cap = None
        self.filelist = list(entries)


def open_archive(
    stream: IO[bytes], name: str, *, max_entries: int, max_directory_bytes: int
) -> zipfile.ZipFile:
    """`zipfile.ZipFile(stream)`, refused with LimitExceeded as soon as its directory is over.

    Other errors are zipfile's own (BadZipFile, NotImplementedError, ...): the
    caller words them as an unreadable archive.
    """
    directory_refusal = (
        f"{name!r} has a central directory of {{size:,}} bytes, over {max_directory_bytes:,} "
        f"({max_directory_bytes // max_entries:,} bytes for each of MAX_ZIP_ENTRIES)"
    )
    entries_refusal = (
        f"{name!r} has more than the {max_entries:,} entries allowed (MAX_ZIP_ENTRIES)"
    )
    capped = _CappedReads(stream, directory_refusal)
    return _BoundedZipFile(
        capped, _CountedEntries(max_entries, entries_refusal), max_directory_bytes
    )
