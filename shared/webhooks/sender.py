"""One webhook POST that trusts neither the receiver nor the resolver.

- It connects only to an address the guard approved (the name is resolved once,
  by the guard), while `Host`, TLS SNI and the certificate check keep the name.
- Proxy variables in the environment are ignored.
- One deadline covers resolving (in a thread nobody waits for past it), connecting,
  sending and receiving.
- At most `MAX_RESPONSE_BYTES` of the body are read, raw: never decompressed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass

import httpx

from shared.webhooks.guard import IPNetwork, Target, resolve_target

MAX_RESPONSE_BYTES = 4096


@dataclass(frozen=True)
class Reply:
    status_code: int
    headers: httpx.Headers
    body_prefix: bytes


class NoAnswer(Exception):
    """Nothing usable came back within the deadline or from any approved address."""


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allowed: list[IPNetwork],
    deadline_seconds: float,
) -> Reply:
    """Resolve and check `url`, then POST `body` to an approved address, all within the deadline.

    Raises InvalidInput (refused by the guard; Unresolvable when the name did not
    resolve), NoAnswer (the deadline passed), or httpx errors from the connection.
    """

    async def attempt() -> Reply:
        target = await _resolve(url, allowed)
        return await _post_pinned(target, body, headers)

    async def bounded() -> Reply:
        try:
            return await asyncio.wait_for(attempt(), deadline_seconds)
        except TimeoutError as exc:
            raise NoAnswer(
                f"no complete answer within {deadline_seconds:g}s (WEBHOOK_TIMEOUT_SECONDS)"
            ) from exc

    return asyncio.run(bounded())


async def _resolve(url: str, allowed: list[IPNetwork]) -> Target:
    """The guard's resolution, with the blocking resolver in a thread of its own.

    Not `asyncio.to_thread`: `asyncio.run` joins its default executor before it
    returns, so a resolver that hangs for 12 s would hold a 2 s deadline for 12 s.
    A daemon thread is left behind instead, and ends when the resolver gives up.
    """
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[Target] = loop.create_future()

    def settle(result: Target | None, error: BaseException | None) -> None:
        if answer.done():  # the deadline passed first
            return
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result, error = resolve_target(url, allowed), None
        except BaseException as exc:  # handed to the waiting coroutine as it is
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="webhook-resolver", daemon=True).start()
    return await answer


def host_header(target: Target) -> str:
    """`Host` as RFC 9110 spells it: an IPv6 literal in brackets, the port unless default."""
    default_port = 443 if target.url.scheme == "https" else 80
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if target.port == default_port else f"{host}:{target.port}"


async def _post_pinned(target: Target, body: bytes, headers: dict[str, str]) -> Reply:
    last_error: Exception | None = None
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=None) as client:
        for address in target.addresses:
            pinned = target.url.copy_with(host=str(address))
            try:
                async with client.stream(
                    "POST",
                    pinned,
                    content=body,
                    headers={**headers, "host": host_header(target), "accept-encoding": "identity"},
                    extensions={"sni_hostname": target.host},
                ) as response:
                    prefix = bytearray()
                    async for chunk in response.aiter_raw():
                        prefix += chunk
                        if len(prefix) >= MAX_RESPONSE_BYTES:
                            break  # the rest is never read
                    return Reply(
                        response.status_code, response.headers, bytes(prefix[:MAX_RESPONSE_BYTES])
                    )
            except httpx.ConnectError as exc:
                last_error = exc  # the next approved address may answer
    raise last_error or NoAnswer(f"{target.host!r} resolved to no address")
