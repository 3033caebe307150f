"""One webhook POST: the deadline covers the resolver, and `Host` is spelled right."""

from __future__ import annotations

import socket
import threading
from typing import Any

import httpx
import pytest

from shared.webhooks.guard import Target, parse_networks
from shared.webhooks.sender import NoAnswer, host_header, post


def test_a_hung_resolver_is_abandoned_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    released = threading.Event()
    resolver_done = threading.Event()
    real = socket.getaddrinfo

    def hung(host: str, *args: Any, **kwargs: Any) -> Any:
        if host != "slow.test":
            return real(host, *args, **kwargs)
        released.wait(60)  # a resolver that answers only when the test says so
        resolver_done.set()
        raise socket.gaierror(socket.EAI_AGAIN, "too late")

    monkeypatch.setattr(socket, "getaddrinfo", hung)
    with pytest.raises(NoAnswer, match=r"within 0\.2s"):
        post("http://slow.test/hook", b"{}", {}, allowed=[], deadline_seconds=0.2)
    # post() came back while the resolver still hung: nothing waited for it.
    assert not resolver_done.is_set()
    released.set()
    assert resolver_done.wait(10)


def _recording_server(family: int, host: str) -> tuple[int, list[bytes]]:
    listener = socket.socket(family)
    listener.bind((host, 0))
    listener.listen(4)
    heads: list[bytes] = []

    def accept() -> None:
        connection, _ = listener.accept()
        with connection, listener:
            data = b""
            while b"\r\n\r\n" not in data:
                data += connection.recv(65536)
            heads.append(data.partition(b"\r\n\r\n")[0])
            connection.sendall(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1], heads


def test_an_ipv6_literal_host_is_bracketed() -> None:
    port, heads = _recording_server(socket.AF_INET6, "::1")
    reply = post(
        f"http://[::1]:{port}/hook",
        b"{}",
        {},
        allowed=parse_networks("::1/128"),
        deadline_seconds=10,
    )
    assert reply.status_code == 204
    host_lines = [line for line in heads[0].split(b"\r\n") if line.lower().startswith(b"host:")]
    assert host_lines == [f"host: [::1]:{port}".encode()]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://[2606:4700::1111]/hook", "[2606:4700::1111]"),
        ("https://[2606:4700::1111]:8443/hook", "[2606:4700::1111]:8443"),
        ("http://example.com/hook", "example.com"),
        ("https://example.com:8443/hook", "example.com:8443"),
    ],
)
def test_host_header_forms(url: str, expected: str) -> None:
    parsed = httpx.URL(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    assert host_header(Target(parsed, parsed.host, port, [])) == expected
