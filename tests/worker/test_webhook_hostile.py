"""Webhook delivery against hostile receivers and resolvers, all real sockets on loopback.

Each case runs `deliver()`, the webhook worker's whole attempt, against a real
SQLite database; receivers are raw TCP servers so they can misbehave at will.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shared.db.migrate import upgrade
from shared.db.models import Job, JobStatus, WebhookAttempt, WebhookEvent, new_id, utcnow
from shared.settings import Settings
from shared.unit_of_work import UnitOfWorkFactory
from shared.webhooks.delivery import Outcome
from worker.webhooks import deliver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
GZIP_BOMB = gzip.compress(bytes(300 * 2**20), compresslevel=9)  # 300 MiB of zeros, ~300 KB


@dataclass
class Server:
    """A loopback TCP server whose handler gets each connection after the request is read."""

    host: str
    handler: Callable[[socket.socket, Server], None]
    port: int = 0
    hits: int = 0
    bytes_sent: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str = "/hook", host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"


def _read_request(connection: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    while len(body) < length:
        body += connection.recv(65536)


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[tuple[Server, socket.socket]] = []

    def start(
        handler: Callable[[socket.socket, Server], None], host: str = "127.0.0.1", port: int = 0
    ) -> Server:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(16)
        server = Server(host, handler, listener.getsockname()[1])

        def accept() -> None:
            while not server.stop.is_set():
                try:
                    connection, _ = listener.accept()
                except OSError:
                    return
                server.hits += 1

                def run(connection: socket.socket = connection) -> None:
                    with connection:
                        _read_request(connection)
                        # OSError: the client hung up, which is what a bounded client does.
                        with contextlib.suppress(OSError):
                            handler(connection, server)

                threading.Thread(target=run, daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        servers.append((server, listener))
        return server

    yield start
    for server, listener in servers:
        server.stop.set()
        listener.close()


def _send(connection: socket.socket, server: Server, data: bytes) -> None:
    connection.sendall(data)
    server.bytes_sent += len(data)


def ok(connection: socket.socket, server: Server) -> None:
    _send(connection, server, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")


def drip(connection: socket.socket, server: Server) -> None:
    _send(connection, server, b"HTTP/1.1 200 OK\r\n")
    while not server.stop.wait(0.3):  # a header byte at a time, never finishing
        _send(connection, server, b"x")


def endless(connection: socket.socket, server: Server) -> None:
    _send(connection, server, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    chunk = b"10000\r\n" + bytes(0x10000) + b"\r\n"
    while not server.stop.is_set():
        _send(connection, server, chunk)


def gzip_bomb(connection: socket.socket, server: Server) -> None:
    head = (
        "HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-type: application/json\r\n"
        f"content-length: {len(GZIP_BOMB)}\r\n\r\n"
    )
    _send(connection, server, head.encode() + GZIP_BOMB)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'hooks.db'}"
    upgrade(url)
    return Settings(
        database_url=url,
        webhook_secrets=SECRET,
        webhook_allowed_networks="127.0.0.0/8",
        webhook_timeout_seconds=2,
        webhook_retry_schedule="1,1",
    )


def event_for(settings: Settings, url: str) -> str:
    job_id, event_id = new_id(), f"msg_{new_id().replace('-', '')}"
    with UnitOfWorkFactory(settings).scope() as session:
        session.add(
            Job(id=job_id, status=JobStatus.CANCELLED, created_at=utcnow(), webhook_url=url)
        )
        session.flush()
        session.add(
            WebhookEvent(
                id=event_id,
                job_id=job_id,
                type="job.cancelled",
                url=url,
                body='{"type": "job.cancelled"}',
                status="pending",
                attempts=0,
                next_attempt_at=utcnow(),
                created_at=utcnow(),
            )
        )
    return event_id


def attempts_of(settings: Settings, event_id: str) -> list[WebhookAttempt]:
    with UnitOfWorkFactory(settings).scope(write=False) as session:
        return list(
            session.scalars(select(WebhookAttempt).where(WebhookAttempt.event_id == event_id))
        )


def test_slow_drip_endless_body_and_gzip_bomb_end_in_bounded_time_and_memory(
    settings: Settings, serve: Callable[..., Server]
) -> None:
    dripping, flooding, bombing, normal = serve(drip), serve(endless), serve(gzip_bomb), serve(ok)
    events = {
        name: event_for(settings, server.url())
        for name, server in {
            "drip": dripping,
            "endless": flooding,
            "bomb": bombing,
            "normal": normal,
        }.items()
    }
    tracemalloc.start()  # peak Python allocations: independent of what this process did before
    with ThreadPoolExecutor(4) as pool:  # the webhook worker's threads
        outcomes: dict[str, Outcome | None] = dict(
            zip(
                events,
                pool.map(
                    lambda e: deliver(e, settings, UnitOfWorkFactory(settings)), events.values()
                ),
                strict=True,
            )
        )
    peak_mib = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    assert dripping.hits == flooding.hits == bombing.hits == normal.hits == 1

    assert outcomes["normal"] is not None
    assert outcomes["normal"].status == "delivered"
    assert outcomes["bomb"] is not None
    assert outcomes["bomb"].status == "delivered"
    assert outcomes["endless"] is not None
    assert outcomes["endless"].status == "delivered"
    drip_outcome = outcomes["drip"]
    assert drip_outcome is not None
    assert drip_outcome.status == "pending"
    assert "no complete answer within 2s (WEBHOOK_TIMEOUT_SECONDS)" in (drip_outcome.error or "")
    assert not dripping.stop.is_set()  # it was still dripping when the attempt ended
    assert attempts_of(settings, events["drip"])[0].duration_ms < 2 * 1000 + 1500
    # The endless body was dropped after a few KiB (the server's send buffer holds the rest).
    time.sleep(0.5)
    assert flooding.bytes_sent < 64 * 2**20
    assert peak_mib < 32, f"deliveries allocated {peak_mib:.0f} MiB"  # the bomb inflates to 300


def test_the_sender_connects_only_to_the_address_the_guard_approved(
    settings: Settings, serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Loopback first: the kernel picks a port free there (and on the wildcard address), so
    # the same port on 127.0.0.2, which nothing else binds, is free too.
    internal = serve(ok, host="127.0.0.1")
    approved = serve(ok, host="127.0.0.2", port=internal.port)  # same port, another address
    answers = iter(["127.0.0.2"] + ["127.0.0.1"] * 10)  # DNS rebinding: public, then internal
    real = socket.getaddrinfo

    def rebinding(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    allowed = settings.model_copy(update={"webhook_allowed_networks": "127.0.0.2/32"})
    outcome = deliver(
        event_for(settings, f"http://rebind.test:{approved.port}/hook"),
        allowed,
        UnitOfWorkFactory(allowed),
    )
    assert outcome is not None
    assert outcome.status == "delivered"
    assert (approved.hits, internal.hits) == (1, 0)


def test_a_dns_failure_is_retried_and_a_refused_address_is_final(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo

    def flaky(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "flaky.test":
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", flaky)
    retried = deliver(
        event_for(settings, "http://flaky.test/hook"), settings, UnitOfWorkFactory(settings)
    )
    assert retried is not None
    assert retried.status == "pending"
    assert retried.retry_in_seconds is not None
    assert "does not resolve" in (retried.error or "")

    private = settings.model_copy(update={"webhook_allowed_networks": ""})
    refused = deliver(
        event_for(settings, "http://127.0.0.1:9/hook"), private, UnitOfWorkFactory(private)
    )
    assert refused is not None
    assert refused.status == "failed"
    assert refused.retry_in_seconds is None
    assert "loopback" in (refused.error or "")


def test_a_url_neither_side_can_parse_becomes_a_recorded_final_attempt(settings: Settings) -> None:
    event_id = event_for(
        settings, "http://127.0.0.1:9/a\x01b"
    )  # stored before the guard knew better
    outcome = deliver(event_id, settings, UnitOfWorkFactory(settings))
    assert outcome is not None
    assert outcome.status == "failed"
    [attempt] = attempts_of(settings, event_id)
    assert "control characters" in (attempt.error or "")
