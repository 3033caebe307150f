"""Refuse URLs whose path or query carry characters no stored value may hold.

A NUL byte in a job id or a query value would reach the database, which
refuses it (Postgres) with an error the route never expects. Checked once for
every route, before routing, instead of in each parameter.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_response

_CONTROL = {*range(0, 32), 127}


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
