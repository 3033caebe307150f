"""Fault: the API process SIGKILLed in the middle of an upload.

Proves that a half-received or half-stored upload never becomes a visible job,
and that the files it had stored before the kill are swept (`intel-classifier
sweep`, the same pass workers run every SWEEP_INTERVAL_SECONDS) once they are
older than ORPHAN_GRACE_SECONDS.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit.processes import Service, free_port, service_env, wait_for
from tests.conftest import image_bytes


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    env = service_env(tmp_path, ORPHAN_GRACE_SECONDS="1")
    service = Service(env, tmp_path, free_port())
    service.migrate()
    try:
        yield service
    finally:
        service.stop()


def noise_zip(entries: int, size: int = 96 * 1024) -> bytes:
    """Incompressible entries, stored: staging them takes a while, and every one hits the disk."""
    buffer = io.BytesIO()
    header = image_bytes()  # a real PNG header, so intake takes each entry as an image
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for index in range(entries):
            archive.writestr(f"{index:04d}.png", header + os.urandom(size))
    return buffer.getvalue()


def uploads(service: Service) -> list[Path]:
    root = service.data_dir / "uploads"
    return sorted(root.iterdir()) if root.is_dir() else []


def stored_files(service: Service) -> list[Path]:
    return [path for folder in uploads(service) for path in folder.iterdir()]


def jobs_listed(service: Service) -> list[str]:
    with service.client() as client:
        return [job["id"] for job in client.get("/jobs").json()["items"]]


def test_killed_while_the_body_streams_in_leaves_no_job(service: Service) -> None:
    api = service.start_api()
    body = noise_zip(40)
    with socket.create_connection(("127.0.0.1", service.port)) as connection:
        boundary = "killtest"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="a.zip"\r\nContent-Type: application/zip\r\n\r\n'
        ).encode()
        length = len(head) + len(body) + len(f"\r\n--{boundary}--\r\n")
        connection.sendall(
            (
                f"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
            ).encode()
            + head
            + body[: len(body) // 2]
        )
        time.sleep(0.5)
        api.stop(signal.SIGKILL)
    service.start_api()
    assert jobs_listed(service) == []
    assert uploads(service) == []


def test_killed_while_storing_then_the_orphaned_files_are_swept(service: Service) -> None:
    body = noise_zip(400)
    for _attempt in range(3):
        api = service.start_api()

        def post() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the server dies under it: the point
                httpx.post(f"{service.url}/jobs", files={"file": ("a.zip", body)}, timeout=60)

        sender = threading.Thread(target=post)
        sender.start()
        # A stored file, not only its job's folder: the first file in a new folder may
        # wait on the disk (a block group not yet read), and a kill in between leaves
        # the folder empty.
        wait_for(lambda: stored_files(service), 30, "staging to start", interval=0.002)
        api.stop(signal.SIGKILL)
        sender.join()
        service.start_api()
        if not jobs_listed(service):
            break
        # The commit won the race against the kill; start over with a clean slate.
        subprocess.run(
            [sys.executable, "-m", "intel_classifier", "sweep"], env=service.env, check=True
        )
        for job_id in jobs_listed(service):
            httpx.delete(f"{service.url}/jobs/{job_id}")
        service.stop()
        service.processes.clear()
    else:
        pytest.fail("the upload committed before every kill; the test could not interrupt it")

    orphans = uploads(service)
    assert len(orphans) == 1, orphans
    assert 0 < len(list(orphans[0].iterdir())) < 400  # part of the zip had been stored
    assert jobs_listed(service) == []

    time.sleep(1.2)  # past ORPHAN_GRACE_SECONDS
    swept = subprocess.run(
        [sys.executable, "-m", "intel_classifier", "sweep"],
        env=service.env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert "1 orphaned upload folder(s)" in swept.stdout
    assert uploads(service) == []
