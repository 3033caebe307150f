"""Downloads that clients never read, and a pool with no connection free, on Postgres.

A CSV or JSONL download reads a page at a time, each in its own short
transaction: a client that stops reading holds no connection, so every other
request of every tenant goes on. A pool timeout anywhere is a 503.
"""

from __future__ import annotations

import csv
import io
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from testkit.crafted import flat_image, unread_download
from testkit.processes import Service, running_api
from testkit.resources import idle_in_transaction
from tests.conftest import fresh_postgres_database

ITEMS = 9_999  # rows of ~450 bytes: 4.5 MB, more than the kernel buffers for one socket
POOL = {"DATABASE_POOL_SIZE": "3", "DATABASE_MAX_OVERFLOW": "0"}


def big_zip() -> bytes:
    image = flat_image("RGB", (8, 8), "JPEG", 0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i in range(ITEMS):
            archive.writestr(f"{'x' * 200}/{'y' * 200}/{i:05d}.jpg", image)
        archive.writestr("=HYPERLINK(evil).jpg", image)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def keyed(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Service, str, str]]:
    env = {"DATABASE_URL": database_url, "AUTH_ENABLED": "true", **POOL}
    env["DATABASE_POOL_TIMEOUT_SECONDS"] = "2"
    with running_api(tmp_path_factory.mktemp("downloads"), **env) as service:
        key = service.new_key("downloads")
        with httpx.Client(base_url=service.url, timeout=120) as client:
            response = client.post(
                "/jobs",
                files={"file": ("big.zip", big_zip())},
                headers={"Authorization": f"Bearer {key}"},
            )
        assert response.status_code == 202, response.text
        yield service, key, response.json()["id"]


def test_unread_downloads_hold_nothing_and_everyone_else_goes_on(
    keyed: tuple[Service, str, str], database_url: str
) -> None:
    service, key, job_id = keyed
    formats = ["csv", "jsonl"] * 4  # 8 downloads, each could hold 2 of the 3 connections
    stalled = [
        unread_download(service.port, key=key, path=f"/jobs/{job_id}/results?format={f}")
        for f in formats
    ]
    try:
        time.sleep(5)  # each has sent what its buffers take, and waits on its client
        assert idle_in_transaction(database_url) == 0
        with httpx.Client(
            base_url=service.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as client:
            for _ in range(5):
                assert client.get("/jobs").status_code == 200
                assert client.get(f"/jobs/{job_id}").status_code == 200
                posted = client.post(
                    "/jobs", files={"file": ("a.jpg", flat_image("RGB", (8, 8), "JPEG"))}
                )
                assert posted.status_code == 202, posted.text
        # A stalled download, read at last, is whole: every page followed the last.
        reader = stalled.pop(0)
        reader.settimeout(60)
        received = b""
        while chunk := reader.recv(1 << 20):
            received += chunk
            if received.endswith(b"\r\n0\r\n\r\n"):
                break
        body = _dechunk(received.partition(b"\r\n\r\n")[2])
        rows = list(csv.reader(io.StringIO(body.decode())))
        assert len(rows) == 1 + ITEMS + 1
        reader.close()
    finally:
        for sock in stalled:
            sock.close()


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def test_file_names_that_spreadsheets_would_run_are_quoted(keyed: tuple[Service, str, str]) -> None:
    service, key, job_id = keyed
    with httpx.Client(base_url=service.url, timeout=120) as client:
        response = client.get(
            f"/jobs/{job_id}/results",
            params={"format": "csv"},
            headers={"Authorization": f"Bearer {key}"},
        )
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[-1][0] == "'=HYPERLINK(evil).jpg"
    assert not any(row[0].startswith(("=", "+", "-", "@")) for row in rows[1:])


def test_a_pool_timeout_anywhere_is_503_database_busy(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "AUTH_ENABLED": "true",
        "DATABASE_POOL_SIZE": "1",
        "DATABASE_MAX_OVERFLOW": "0",
        "DATABASE_POOL_TIMEOUT_SECONDS": "0.01",
    }
    with running_api(tmp_path_factory.mktemp("pool"), **env) as service:
        key = service.new_key("pool")

        def call(_: int) -> tuple[int, dict[str, Any], str | None]:
            response = httpx.get(
                f"{service.url}/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=30
            )
            return response.status_code, response.json(), response.headers.get("retry-after")

        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(call, range(240)))
    statuses = {status for status, _, _ in answers}
    assert statuses <= {200, 503}, answers
    assert 503 in statuses  # the pool of one was contended: the path above was taken
    for status, body, retry_after in answers:
        if status == 503:
            assert body["error"]["code"] == "database_busy"
            assert retry_after == "1"
