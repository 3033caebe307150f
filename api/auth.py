"""API keys at the door: checked before the body is read, so strangers upload nothing.

With AUTH_ENABLED every path but the public ones needs `Authorization: Bearer
<key>`; the key's id then scopes every job query (`Caller.owner`). Job creation
is rate-limited per key here too, before the upload streams in.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import DATABASE_ERRORS, database_error_response, error_response
from shared.access.keys import authenticate
from shared.access.ratelimit import check_job_rate
from shared.errors import AppError, RateLimited, Unauthorized
from shared.settings import Settings
from shared.unit_of_work import UnitOfWorkFactory

PUBLIC_PATHS = frozenset(
    {"/", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc"}
)
PUBLIC_PREFIXES = ("/static/", "/docs/")
JOB_CREATING = frozenset({("POST", "/jobs"), ("POST", "/predict")})
RETRY_PATH = re.compile(r"/jobs/[^/]+/retry")
STATE_KEY = "intel_api_key_id"
ADMIN_STATE_KEY = "intel_api_key_admin"

bearer = HTTPBearer(auto_error=False, description="An API key from `intel-classifier keys create`")


@dataclass(frozen=True)
class Caller:
    key_id: str | None  # None when the server runs without keys
    admin: bool = False  # an admin key; on a server without keys, every caller is its operator

    @property
    def owner(self) -> str | None:
        """The filter job queries take: None sees every job (no keys on this server)."""
        return self.key_id


async def get_caller(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Caller:
    # The middleware below did the checking; the bearer dependency declares it in OpenAPI.
    # Async: it reads the request's state, so it needs no threadpool hop (api/deps.py).
    state = request.scope.get("state", {})
    key_id = state.get(STATE_KEY)
    return Caller(key_id, admin=key_id is None or bool(state.get(ADMIN_STATE_KEY)))


CallerDep = Annotated[Caller, Depends(get_caller)]


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class Authentication:
    def __init__(self, app: ASGIApp, settings: Settings, units: UnitOfWorkFactory) -> None:
        self.app = app
        self.settings = settings
        self.units = units

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        key_id: str | None = None
        try:
            if self.settings.auth_enabled:
                header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
                key_id, admin = await anyio.to_thread.run_sync(_key_of, self.units, header)
                scope.setdefault("state", {}).update({STATE_KEY: key_id, ADMIN_STATE_KEY: admin})
            if creates_job(scope["method"], scope["path"]):
                bucket = key_id or _client_address(scope)
                await anyio.to_thread.run_sync(check_job_rate, self.settings, bucket)
        except AppError as exc:
            response = error_response(exc.http_status, exc.code, exc.message)
            if exc.http_status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="intel-image-classifier"'
            if isinstance(exc, RateLimited):
                response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_seconds)))
            await response(scope, receive, send)
            return
        except DATABASE_ERRORS as exc:  # a pool timeout too: 503, as in every route
            await database_error_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def creates_job(method: str, path: str) -> bool:
    """Requests that make a job, and so count against the key's job rate."""
    path = path.rstrip("/")
    return (method, path) in JOB_CREATING or (method == "POST" and bool(RETRY_PATH.fullmatch(path)))


def _key_of(units: UnitOfWorkFactory, header: str) -> tuple[str, bool]:
    """The key's id, and whether it is an admin key."""
    key = bearer_key(header)
    with units.scope(write=False) as unit:
        row = authenticate(unit, key)
        return row.id, row.admin


def bearer_key(authorization: str) -> str:
    """The key an `Authorization: Bearer <key>` header carries, or Unauthorized."""
    if not authorization:
        raise Unauthorized("this server requires an API key: send `Authorization: Bearer <key>`")
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("the Authorization header must read `Bearer <key>`")
    return key


def _client_address(scope: Scope) -> str:
    client = scope.get("client")
    return f"address:{client[0]}" if client else "address:unknown"
