"""Crafted inputs for the hostile-input tests and the memory measurements.

Archives whose end records disagree with their real central directory, and
images of every depth that compress to almost nothing: small to send, costly
to an unzipper or decoder that trusts what they declare.
"""

from __future__ import annotations

import io
import socket
import struct
import zipfile
from pathlib import Path

from PIL import Image

EOCD = struct.Struct("<4sHHHHIIH")  # end of central directory, 22 bytes
ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")  # 56 bytes
ZIP64_LOCATOR = struct.Struct("<4sIQI")  # 20 bytes
CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # one central directory record, 46 bytes + name


def _first_entry() -> tuple[bytes, bytes]:
    """One real stored entry: its local header and data, and its central record."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("a.txt", b"a")
    data = buffer.getvalue()
    central_at = struct.unpack("<I", data[-6:-2])[0]
    return data[:central_at], data[central_at : -EOCD.size]


def central_records(count: int) -> bytes:
    """`count` minimal central-directory records (empty stored files named 0, 1, ...)."""
    records = []
    for i in range(count):
        name = str(i).encode()
        records.append(
            CENTRAL.pack(
                b"PK\x01\x02", 20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0, len(name), 0, 0, 0, 0, 0, 0
            )
            + name
        )
    return b"".join(records)


def _body_and_directory(count: int) -> tuple[bytes, bytes]:
    local, first = _first_entry()
    return local, first + central_records(count - 1)


def honest_archive(count: int) -> bytes:
    """`count` entries, with end records that tell the truth."""
    body, directory = _body_and_directory(count)
    end = EOCD.pack(
        b"PK\x05\x06", 0, 0, min(count, 0xFFFF), min(count, 0xFFFF), len(directory), len(body), 0
    )
    return body + directory + end


def zip64_locator_points_elsewhere(count: int) -> bytes:
    """A zip64 locator whose offset names a decoy record of one entry.

    The record just before the locator (where readers such as Python's zipfile
    look) and the directory itself hold all `count` entries; the plain end
    record claims one.
    """
    body, directory = _body_and_directory(count)
    decoy_at = len(body)
    decoy = ZIP64_EOCD.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, 1, 1, 46, decoy_at + ZIP64_EOCD.size)
    directory_at = decoy_at + ZIP64_EOCD.size
    real = ZIP64_EOCD.pack(
        b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, len(directory), directory_at
    )
    locator = ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, decoy_at, 1)
    end = EOCD.pack(b"PK\x05\x06", 0, 0, 1, 1, 46, directory_at, 0)
    return body + decoy + directory + real + locator + end


def end_signature_inside_end_record(count: int) -> bytes:
    """An honest directory whose end record carries its own signature in a field.

    The directory offset reads `PK\\x05\\x06`: a scan for the last signature in
    the tail lands inside the record, 16 bytes in, where no whole record fits.
    """
    body, directory = _body_and_directory(count)
    end = EOCD.pack(
        b"PK\x05\x06", 0, 0, min(count, 0xFFFF), min(count, 0xFFFF), len(directory), 0, 0
    )
    end = end[:16] + b"PK\x05\x06" + end[20:]
    return body + directory + end


def end_records_claim_little(count: int) -> bytes:
    """Every end record says one entry and 46 bytes; the directory holds `count`."""
    body, directory = _body_and_directory(count)
    end = EOCD.pack(b"PK\x05\x06", 0, 0, 1, 1, 46, len(body), 0)
    return body + directory + end


CRAFTED_ARCHIVES = {
    "honest": honest_archive,
    "zip64 locator points elsewhere": zip64_locator_points_elsewhere,
    "end signature inside the end record": end_signature_inside_end_record,
    "end records claim one entry": end_records_claim_little,
}


def flat_image(mode: str, size: tuple[int, int], fmt: str = "PNG", value: float = 0) -> bytes:
    """An image of one value: any size compresses to a few KB."""
    buffer = io.BytesIO()
    options = {"compression": "tiff_adobe_deflate"} if fmt == "TIFF" else {}
    Image.new(mode, size, value).save(buffer, format=fmt, **options)
    return buffer.getvalue()


# 40 MP at each depth Pillow decodes to: what each costs a decoder.
DEEP_IMAGES = {
    "8-bit RGB PNG": ("RGB", "PNG"),
    "16-bit grey PNG": ("I;16", "PNG"),
    "32-bit integer TIFF": ("I", "TIFF"),
    "32-bit float TIFF": ("F", "TIFF"),
}


def unread_download(port: int, path: str, key: str) -> socket.socket:
    """A GET whose answer is never read: a tiny receive window, then nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
    return sock


def zip_of(paths: list[Path]) -> bytes:
    """A stored (uncompressed) zip of the files at `paths`, each under a unique name."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for index, path in enumerate(paths):
            archive.writestr(f"{index:05d}-{path.parent.name}-{path.name}", path.read_bytes())
    return buffer.getvalue()
