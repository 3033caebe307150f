"""Refuse requests that different readers could read differently, before anything reads them.

- A URL whose path or query carries a control character: a NUL byte in a job
  id or a query value would reach the database, which refuses it (Postgres)
  with an error the route never expects.
- A header that means one thing sent twice: proxies and FastAPI's own
  readers take the first `Authorization`, a dict of the headers the last, so a
  request with two could be checked under one key and served under another.

Checked once for every route, before routing; repeated headers before authentication.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_response

_CONTROL = {*range(0, 32), 127}
ONCE_ONLY_HEADERS = (b"authorization", b"idempotency-key", b"content-type", b"content-length")


def _has_control(raw: bytes) -> bool:
    return any(byte in _CONTROL for byte in unquote_to_bytes(raw))


class UrlHygiene:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"].encode("utf-8", "surrogateescape")
            if _has_control(path) or _has_control(scope.get("query_string", b"")):
                response = error_response(
                    400,
                    "invalid_input",
                    "the URL holds a control character (such as %00) in its path or query",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RepeatedHeaders:
    """Runs first, before authentication reads a header that could be read two ways."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            repeated = _repeated_header(scope["headers"])
            if repeated is not None:
                response = error_response(
                    400,
                    "invalid_input",
                    f"send the {repeated} header once; this request has it twice or more",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _repeated_header(headers: list[tuple[bytes, bytes]]) -> str | None:
    names = [name.lower() for name, _ in headers]
    return next(
        (name.decode().title() for name in ONCE_ONLY_HEADERS if names.count(name) > 1), None
    )
