"""Slow clients: a request's headers and body must arrive in time, or the connection closes."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.processes import Service, running_api
from tests.conftest import image_bytes

DEADLINES = {
    "REQUEST_HEADER_TIMEOUT_SECONDS": "1",
    "REQUEST_BODY_TIMEOUT_SECONDS": "1",
    "REQUEST_BODY_MIN_BYTES_PER_SECOND": "100000",
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_api(tmp_path_factory.mktemp("slow"), **DEADLINES) as service:
        yield service


def connect(service: Service) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port))
    sock.settimeout(30)  # far past every deadline: a hang fails the test, never a slow server
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server hung up; what it sent before (if anything) is read and dropped."""
    with sock:
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True


def test_connections_that_never_finish_their_headers_are_closed(api: Service) -> None:
    dribblers = [connect(api) for _ in range(30)]
    for sock in dribblers:
        sock.sendall(b"GET /jobs HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    silent = connect(api)  # connects and sends nothing at all
    assert all(closed_by_server(sock) for sock in [*dribblers, silent])


def test_a_body_that_trickles_is_cut_off(api: Service) -> None:
    sock = connect(api)
    sock.sendall(
        b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 1000000\r\n\r\n--b\r\n"
    )
    assert closed_by_server(sock)


def test_the_next_request_on_a_kept_alive_connection_has_a_deadline_too(api: Service) -> None:
    sock = connect(api)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
    assert closed_by_server(sock)


def test_an_honest_upload_still_arrives(api: Service, tmp_path: Path) -> None:
    big = image_bytes(size=(64, 64)) + bytes(3 * 2**20)  # 3 MiB: over a second's worth at no rate
    with api.client() as client:
        response = client.post("/jobs", files={"file": ("big.png", big)})
    assert response.status_code == 202, response.text
