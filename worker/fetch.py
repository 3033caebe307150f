"""Fetching an input by reference, in the decode step, under the item's decode deadline.

`http(s)`: resolved once and checked by the webhook address guard (public
addresses only, INPUT_ALLOWED_NETWORKS excepted), then asked of exactly those
addresses (a later DNS answer cannot redirect it); redirects are refused, not
followed, and the body may not exceed MAX_IMAGE_BYTES. `s3://`: read with the
service's own credentials from a bucket in INPUT_ALLOWED_BUCKETS. Any failure
raises FetchFailed naming the URL and why; the item fails alone with that reason.
"""

from __future__ import annotations

import httpx

from shared.errors import AppError, InvalidInput
from shared.settings import Settings
from shared.storage import s3_client
from shared.webhooks.guard import loggable_url, parse_networks, resolve_target
from shared.webhooks.sender import host_header

CHUNK = 1 << 16


class FetchFailed(AppError):
    """An input could not be fetched; the message is the item's error, as it stands."""

    code = "fetch_failed"


def fetch_input(url: str, settings: Settings) -> bytes:
    if url.startswith("s3://"):
        return _fetch_s3(url, settings)
    return _fetch_http(url, settings)


def _fetch_http(url: str, settings: Settings) -> bytes:
    shown = loggable_url(url)
    try:
        target = resolve_target(url, parse_networks(settings.input_allowed_networks))
    except InvalidInput as exc:
        raise FetchFailed(
            f"{shown}: refused: its host is not a public address (INPUT_ALLOWED_NETWORKS can "
            "allow a network)"
        ) from exc
    timeout = httpx.Timeout(settings.decode_timeout_seconds)
    last_error: Exception | None = None
    with httpx.Client(trust_env=False, follow_redirects=False, timeout=timeout) as client:
        for address in target.addresses:
            pinned = target.url.copy_with(host=str(address))
            try:
                with client.stream(
                    "GET",
                    pinned,
                    headers={"host": host_header(target), "accept-encoding": "identity"},
                    extensions={"sni_hostname": target.host},
                ) as reply:
                    return _body(reply, shown, settings.max_image_bytes)
            except httpx.HTTPError as exc:
                last_error = exc
    raise FetchFailed(f"{shown}: could not be fetched: {last_error}")


def _body(reply: httpx.Response, shown: str, limit: int) -> bytes:
    if reply.is_redirect:
        raise FetchFailed(f"{shown}: HTTP {reply.status_code}: redirects are not followed")
    if reply.status_code != 200:
        raise FetchFailed(f"{shown}: HTTP {reply.status_code} {reply.reason_phrase}")
    declared = reply.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise FetchFailed(f"{shown}: {declared} bytes, over {limit} (MAX_IMAGE_BYTES)")
    data = bytearray()
    for chunk in reply.iter_bytes(CHUNK):
        data += chunk
        if len(data) > limit:
            raise FetchFailed(f"{shown}: over {limit} bytes (MAX_IMAGE_BYTES)")
    return bytes(data)


def _fetch_s3(url: str, settings: Settings) -> bytes:
    bucket, _, key = url[5:].partition("/")
    allowed = {b.strip() for b in settings.input_allowed_buckets.split(",") if b.strip()}
    if bucket not in allowed:  # checked at submission too; the setting may have changed
        raise FetchFailed(f"{url}: bucket {bucket!r} is not in INPUT_ALLOWED_BUCKETS")
    client = s3_client()
    try:
        reply = client.get_object(Bucket=bucket, Key=key)
    except client.exceptions.NoSuchKey as exc:
        raise FetchFailed(f"{url}: no such key") from exc
    except Exception as exc:
        raise FetchFailed(f"{url}: could not be read: {exc}") from exc
    if int(reply.get("ContentLength") or 0) > settings.max_image_bytes:
        raise FetchFailed(f"{url}: over {settings.max_image_bytes} bytes (MAX_IMAGE_BYTES)")
    return bytes(reply["Body"].read(settings.max_image_bytes + 1))
