"""Hostile uploads: archives built to attack an unzipper, bombs, lies, broken multipart.

Each is answered with the right status and a clear error, by a real API process;
the last test checks that all of them together cost the process a bounded amount
of memory: its peak RSS stays within MAX_IMAGE_BYTES + 96 MiB of where it started.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit.crafted import CRAFTED_ARCHIVES
from testkit.processes import Service, error_of, free_port, running_api, service_env
from tests.conftest import image_bytes, zip_bytes

MAX_IMAGE_BYTES = 5 * 1024 * 1024
JPEG = image_bytes(size=(64, 64), fmt="JPEG", colour=(30, 120, 200))
LIMITS = {
    "MAX_UPLOAD_BYTES": str(60 * 1024 * 1024),
    "MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
    "MAX_ZIP_ENTRIES": "500",
    "MAX_ZIP_RATIO": "100",
    "MAX_IMAGE_PIXELS": "50000000",
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_api(tmp_path_factory.mktemp("hostile"), **LIMITS) as service:
        yield service


@pytest.fixture
def client(api: Service) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


def raw_zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return buffer.getvalue()


def symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def item_errors(client: httpx.Client, response: httpx.Response) -> dict[str, str | None]:
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    items = client.get(f"/jobs/{job_id}/results").json()["items"]
    return {item["filename"]: item["error"] for item in items}


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("/etc/cron.d/evil.jpg", "absolute paths are not extracted"),
        ("C:\\Windows\\evil.jpg", "absolute paths are not extracted"),
        ("../../outside.jpg", "'..' is not extracted"),
        ("photos/../../outside.jpg", "'..' is not extracted"),
    ],
)
def test_unsafe_entry_names_fail_alone(
    client: httpx.Client, api: Service, name: str, needle: str
) -> None:
    response = client.post(
        "/jobs", files={"file": ("a.zip", raw_zip([(name, JPEG), ("ok.jpg", JPEG)]))}
    )
    errors = item_errors(client, response)
    assert errors["ok.jpg"] is None
    assert needle in (errors[name] or "")
    assert not (api.data_dir / "outside.jpg").exists()


def test_symlinks_are_not_followed(client: httpx.Client) -> None:
    archive = raw_zip([symlink_entry("passwd.jpg", "/etc/passwd"), ("ok.jpg", JPEG)])
    errors = item_errors(client, client.post("/jobs", files={"file": ("l.zip", archive)}))
    assert errors == {
        "passwd.jpg": "symbolic link: links in archives are not followed",
        "ok.jpg": None,
    }


def test_duplicate_names_classify_the_first_only(client: httpx.Client) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        archive = raw_zip([("same.jpg", JPEG), ("same.jpg", JPEG)])
    response = client.post("/jobs", files={"file": ("d.zip", archive)})
    assert response.status_code == 202, response.text
    items = client.get(f"/jobs/{response.json()['id']}/results").json()["items"]
    assert [item["error"] for item in items] == [
        None,
        "duplicate entry name: only the first entry with this name is classified",
    ]


def test_nested_archives_are_not_opened(client: httpx.Client) -> None:
    inner = zip_bytes({f"{i}.bmp": bytes(900_000) for i in range(10)})  # 9 MB of zeros inside
    errors = item_errors(
        client,
        client.post(
            "/jobs", files={"file": ("n.zip", raw_zip([("inner.zip", inner), ("ok.jpg", JPEG)]))}
        ),
    )
    assert errors["inner.zip"] == "not an image (archives inside the archive are not extracted)"
    only_nested = client.post("/jobs", files={"file": ("n.zip", raw_zip([("inner.zip", inner)]))})
    assert "archives inside the archive" in error_of(only_nested, 422)["message"]


def test_ratio_bomb_with_a_lying_size_header_fails_alone(client: httpx.Client) -> None:
    # The headers say 100 bytes; the data inflates to 4 MB of zeros.
    payload = bytes(4_000_000)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb.jpg", payload)
        archive.writestr("ok.jpg", JPEG)
    data = bytearray(buffer.getvalue())
    real = struct.pack("<I", len(payload))
    for at in [i for i in range(len(data)) if data[i : i + 4] == real]:
        data[at : at + 4] = struct.pack("<I", 100)
    errors = item_errors(client, client.post("/jobs", files={"file": ("b.zip", bytes(data))}))
    assert errors["ok.jpg"] is None
    assert "cannot extract from the zip" in (errors["bomb.jpg"] or "")


def directory_bomb(entries: int) -> bytes:
    """Few entries, each with a 60 KB extra field: megabytes of central directory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i in range(entries):
            info = zipfile.ZipInfo(f"{i}.txt")
            info.extra = struct.pack("<HH", 0xCAFE, 60_000) + bytes(60_000)
            archive.writestr(info, b"")
    return buffer.getvalue()


def test_the_directory_is_judged_from_the_end_record_before_it_is_read(
    client: httpx.Client,
) -> None:
    error = error_of(client.post("/jobs", files={"file": ("dir.zip", directory_bomb(100))}), 413)
    assert "central directory of" in error["message"]
    assert "MAX_ZIP_ENTRIES" in error["message"]


def test_many_small_entries_are_judged_by_the_whole_archive(client: httpx.Client) -> None:
    archive = zip_bytes({f"{i}.bmp": bytes(20_000) for i in range(400)})
    error = error_of(client.post("/jobs", files={"file": ("small.zip", archive)}), 413)
    assert "as a whole" in error["message"]
    assert "MAX_ZIP_RATIO" in error["message"]


def test_entry_count_bomb_is_413(client: httpx.Client) -> None:
    archive = zip_bytes({f"{i}.txt": b"" for i in range(501)})
    error = error_of(client.post("/jobs", files={"file": ("many.zip", archive)}), 413)
    assert "more than the 500 entries allowed (MAX_ZIP_ENTRIES)" in error["message"]


@pytest.mark.parametrize("form", sorted(set(CRAFTED_ARCHIVES) - {"end records claim one entry"}))
def test_crafted_end_records_are_judged_by_the_real_directory(
    client: httpx.Client, form: str
) -> None:
    archive = CRAFTED_ARCHIVES[form](501)
    error = error_of(client.post("/jobs", files={"file": ("crafted.zip", archive)}), 413)
    assert "more than the 500 entries allowed (MAX_ZIP_ENTRIES)" in error["message"]
    huge = CRAFTED_ARCHIVES[form](300_000)  # 23 MB of records, 15 MB of directory
    error = error_of(client.post("/jobs", files={"file": ("crafted.zip", huge)}), 413)
    assert "central directory of" in error["message"]


def test_end_records_pointing_nowhere_are_an_unreadable_archive(client: httpx.Client) -> None:
    archive = CRAFTED_ARCHIVES["end records claim one entry"](501)
    error = error_of(client.post("/jobs", files={"file": ("crafted.zip", archive)}), 422)
    assert "not a readable zip archive" in error["message"]


def test_encrypted_entries_fail_alone_without_internals(client: httpx.Client) -> None:
    archive = bytearray(raw_zip([("secret.jpg", JPEG), ("ok.jpg", JPEG)]))
    # zipfile writes no encrypted entries: set bit 0 of the first entry's flags by hand,
    # in its local header (offset 6) and its central record (offset 8).
    archive[6] |= 0x1
    archive[archive.index(b"PK\x01\x02") + 8] |= 0x1
    errors = item_errors(client, client.post("/jobs", files={"file": ("e.zip", bytes(archive))}))
    assert errors == {
        "secret.jpg": "encrypted: password-protected entries are not extracted",
        "ok.jpg": None,
    }


def png_claiming(width: int, height: int) -> bytes:
    """A small, valid PNG whose header claims a huge canvas: a pixel bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(width + 1)))
        + chunk(b"IEND", b"")
    )


def test_pixel_bombs_are_refused_from_the_header(client: httpx.Client) -> None:
    bomb = png_claiming(100_000, 100_000)  # 10 billion pixels, a few hundred bytes
    error = error_of(client.post("/jobs", files={"file": ("bomb.png", bomb)}), 413)
    assert error["code"] == "image_too_large"
    assert "10,000,000,000 pixels, over the limit of 50,000,000" in error["message"]
    errors = item_errors(
        client,
        client.post(
            "/jobs", files={"file": ("z.zip", zip_bytes({"bomb.png": bomb, "ok.jpg": JPEG}))}
        ),
    )
    assert "10,000,000,000 pixels" in (errors["bomb.png"] or "")


def test_files_are_judged_by_their_bytes_not_their_names(client: httpx.Client) -> None:
    html = b"<html><script>alert(1)</script></html>"
    lying = client.post("/jobs", files={"file": ("photo.jpg", html, "image/jpeg")})
    assert error_of(lying, 415)["code"] == "unsupported_media_type"
    # A PNG called .zip is an image; a zip called .png is an archive.
    as_image = client.post("/jobs", files={"file": ("photos.zip", JPEG, "application/zip")})
    assert as_image.status_code == 202
    assert as_image.json()["total"] == 1
    as_zip = client.post(
        "/jobs", files={"file": ("a.png", zip_bytes({"1.jpg": JPEG, "2.jpg": JPEG}), "image/png")}
    )
    assert as_zip.status_code == 202
    assert as_zip.json()["total"] == 2


def test_huge_form_fields_are_413(client: httpx.Client) -> None:
    over_ours = client.post(
        "/jobs", files={"file": ("a.jpg", JPEG)}, data={"metadata": "x" * 100_000}
    )
    assert (
        "100,000 bytes, over the limit of 65,536 (MAX_FORM_FIELD_BYTES)"
        in error_of(over_ours, 413)["message"]
    )
    over_parser = client.post(
        "/jobs", files={"file": ("a.jpg", JPEG)}, data={"metadata": "x" * 3_000_000}
    )
    error = error_of(over_parser, 413)
    assert error["code"] == "limit_exceeded"
    assert "MAX_FORM_FIELD_BYTES" in error["message"]


def test_too_many_parts_is_413(client: httpx.Client) -> None:
    parts = [("files", (f"{i}.jpg", b"x")) for i in range(1001)]
    error = error_of(client.post("/jobs", files=parts), 413)
    assert "Too many files" in error["message"]
    assert ".zip" in error["message"]


@pytest.mark.parametrize(
    ("content_type", "body", "status", "needle"),
    [
        ("multipart/form-data", b"--x\r\n", 400, "boundary"),
        (
            "multipart/form-data; boundary=x",
            b"garbage without any boundary",
            400,
            "malformed request body",
        ),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
            + JPEG[:100],  # the body ends before the part does
            422,
            "no file uploaded",
        ),
        ("application/json", b'{"file": "a.jpg"}', 422, "no file uploaded"),
    ],
)
def test_malformed_multipart_is_a_clear_4xx(
    client: httpx.Client, content_type: str, body: bytes, status: int, needle: str
) -> None:
    response = client.post("/jobs", content=body, headers={"content-type": content_type})
    assert needle in error_of(response, status)["message"]


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_every_bomb_together_keeps_memory_bounded(tmp_path: Path) -> None:
    # A fresh process: its peak RSS (VmHWM) has seen nothing but its own start.
    service = Service(service_env(tmp_path, **LIMITS), tmp_path, free_port())
    service.migrate()
    process = service.start_api()
    four_mib_images = raw_zip(
        [(f"{i}.png", image_bytes() + os.urandom(4 * 2**20)) for i in range(6)]
    )
    bombs = {  # name: (bytes, expected status)
        "pixels.png": (png_claiming(100_000, 100_000), 413),
        "ratio.zip": (zip_bytes({"zeros.bmp": bytes(40_000_000)}), 413),
        "big-entry.zip": (
            raw_zip([("big.bmp", os.urandom(MAX_IMAGE_BYTES + 1)), ("ok.jpg", JPEG)]),
            202,
        ),
        "entries.zip": (zip_bytes({f"{i}.txt": b"" for i in range(501)}), 413),
        "nested.zip": (raw_zip([("inner.zip", zip_bytes({"z.bmp": bytes(9_000_000)}))]), 422),
        "large.zip": (four_mib_images, 202),
        # 400 small entries that each inflate ~500:1, none over the per-entry floor.
        "many-small.zip": (zip_bytes({f"{i}.bmp": bytes(20_000) for i in range(400)}), 413),
        "directory.zip": (directory_bomb(100), 413),
        # 300,000 records behind end records that disagree: each is about 23 MB.
        **{
            f"{form}.zip": (CRAFTED_ARCHIVES[form](300_000), 413)
            for form in ("zip64 locator points elsewhere", "end signature inside the end record")
        },
    }
    # 55 parts of almost 1 MiB: under Starlette's default they would all stay in memory.
    parts = [("files", (f"{i}.png", image_bytes() + os.urandom(2**20 - 200))) for i in range(55)]
    try:
        with service.client() as client:
            client.post("/jobs", files={"file": ("warm.jpg", JPEG)})  # the first request's imports
            started = peak_rss_kib(process.popen.pid)
            began = time.monotonic()
            for _ in range(3):
                for name, (data, expected) in bombs.items():
                    status = client.post("/jobs", files={"file": (name, data)}).status_code
                    assert status == expected, (name, status)
                assert client.post("/jobs", files=parts).status_code == 202
            elapsed = time.monotonic() - began
        grown_mib = (peak_rss_kib(process.popen.pid) - started) / 1024
    finally:
        service.stop()
    print(
        f"{3 * len(bombs)} hostile uploads answered in {elapsed:.2f}s; "
        f"peak RSS +{grown_mib:.1f} MiB"
    )
    # One image is in memory at a time; every part, archive and directory is read from disk.
    assert grown_mib < MAX_IMAGE_BYTES / 2**20 + 48
