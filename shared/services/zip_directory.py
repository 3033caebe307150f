"""Read a zip's size from its end record before anything parses its central directory.

`zipfile` reads the whole central directory into memory when it opens an
archive, whatever the entry count it declares: a directory of millions of tiny
records is gigabytes of Python objects. Its end-of-central-directory record
(and the zip64 one, when present) says how many entries there are and how many
bytes the directory takes, in the last few KiB of the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import IO

_EOCD = b"PK\x05\x06"
_EOCD_FORMAT = "<4sHHHHIIH"
_EOCD_SIZE = struct.calcsize(_EOCD_FORMAT)  # 22
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_LOCATOR_FORMAT = "<4sIQI"
_ZIP64_LOCATOR_SIZE = struct.calcsize(_ZIP64_LOCATOR_FORMAT)  # 20
_ZIP64_EOCD = b"PK\x06\x06"
_ZIP64_EOCD_FORMAT = "<4sQHHIIQQQQ"
_ZIP64_EOCD_SIZE = struct.calcsize(_ZIP64_EOCD_FORMAT)  # 56
_MAX_COMMENT = 65_535


@dataclass(frozen=True)
class Directory:
    entries: int
    size_bytes: int


def read_directory(stream: IO[bytes]) -> Directory | None:
    """What the end record declares, or None when there is none (zipfile will say why)."""
    stream.seek(0, 2)
    length = stream.tell()
    tail_length = min(length, _EOCD_SIZE + _MAX_COMMENT + _ZIP64_LOCATOR_SIZE)
    stream.seek(length - tail_length)
    tail = stream.read(tail_length)
    stream.seek(0)
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < _EOCD_SIZE:
        return None
    fields = struct.unpack(_EOCD_FORMAT, tail[at : at + _EOCD_SIZE])
    entries, size = fields[4], fields[5]
    locator_at = at - _ZIP64_LOCATOR_SIZE
    if locator_at >= 0 and tail[locator_at : locator_at + 4] == _ZIP64_LOCATOR:
        offset = struct.unpack(
            _ZIP64_LOCATOR_FORMAT, tail[locator_at : locator_at + _ZIP64_LOCATOR_SIZE]
        )[2]
        stream.seek(offset)
        record = stream.read(_ZIP64_EOCD_SIZE)
        stream.seek(0)
        if len(record) == _ZIP64_EOCD_SIZE and record[:4] == _ZIP64_EOCD:
            zip64 = struct.unpack(_ZIP64_EOCD_FORMAT, record)
            entries, size = max(entries, zip64[7]), max(size, zip64[8])
    return Directory(entries, size)
