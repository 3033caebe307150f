"""uvicorn's HTTP/1.1 protocol with deadlines on how long a request may take to arrive.

uvicorn waits forever for a request's headers and body: a hundred connections
that send a byte now and then hold a hundred sockets, and their tasks, for as
long as they like. Here, as Apache's mod_reqtimeout does it:

- the headers must be complete within REQUEST_HEADER_TIMEOUT_SECONDS of the
  connection opening (or of the first byte of the next request on a kept-alive
  connection);
- the body must arrive within REQUEST_BODY_TIMEOUT_SECONDS, a deadline that
  each chunk moves later by its size over REQUEST_BODY_MIN_BYTES_PER_SECOND, so a
  large upload at an honest rate always fits and a trickle does not.

Time during which the server itself stops reading (the app has not taken the
last chunk yet) does not count against the client. Past a deadline the
connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


class DeadlineH11Protocol(H11Protocol):
    header_seconds: float = 10.0
    body_seconds: float = 30.0
    body_min_rate: float = 16 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._body_started = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._expect_headers()  # the next request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is h11.SEND_BODY:
            if not self._body_started:
                self._body_started = True
                self._arm(self.body_seconds)
            elif self._deadline is not None:
                self._deadline += len(data) / self.body_min_rate
        elif self.conn.their_state is not h11.IDLE:  # the whole request is in
            self._disarm()

    def on_response_complete(self) -> None:
        self._disarm()
        self._body_started = False
        super().on_response_complete()

    def _expect_headers(self) -> None:
        self._body_started = False
        self._arm(self.header_seconds)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = time.monotonic() + seconds
        self._timer = self.loop.call_later(seconds, self._check)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._deadline = None

    def _check(self) -> None:
        self._timer = None
        if self._deadline is None or self.transport.is_closing():
            return
        now = time.monotonic()
        if self.flow.read_paused:  # our own back-pressure: the client is not late
            self._deadline = max(self._deadline, now + 1.0)
        if now < self._deadline:
            self._timer = self.loop.call_later(self._deadline - now, self._check)
            return
        waiting_for = "body" if self._body_started else "headers"
        log.info("closing a connection whose request %s did not arrive in time", waiting_for)
        self._deadline = None
        self.transport.close()  # connection_lost tells the app the client is gone


def protocol_with_deadlines(
    header_seconds: float, body_seconds: float, body_min_rate: float
) -> type[DeadlineH11Protocol]:
    """The protocol class for uvicorn's `http=`, with these deadlines."""
    return type(
        "ConfiguredDeadlineH11Protocol",
        (DeadlineH11Protocol,),
        {
            "header_seconds": header_seconds,
            "body_seconds": body_seconds,
            "body_min_rate": body_min_rate,
        },
    )
