"""Inputs by reference: photos a job names by URL or s3:// key instead of uploading them.

`POST /jobs` takes them as JSON (`{"inputs": [{"custom_id": ..., "url": ...}]}`)
or as a JSONL manifest of the same lines. They are checked here, at submission,
for what can be checked without fetching: the scheme, the shape of the URL, the
bucket (INPUT_ALLOWED_BUCKETS), unique custom ids, the job's item limit. A worker
fetches each one as it decodes it (`worker.fetch`), through the same address
guard as webhooks, so a name that resolves elsewhere by then is still refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from shared.db.models import new_id
from shared.errors import InvalidInput, LimitExceeded, ServiceUnavailable
from shared.jobs.intake import StagedItem
from shared.settings import Settings
from shared.storage import s3_client
from shared.text_rules import unstorable

MAX_URL_CHARS = 2048
MAX_CUSTOM_ID_CHARS = 256


@dataclass(frozen=True)
class InputRef:
    url: str
    custom_id: str | None = None


def parse_manifest(text: bytes, settings: Settings) -> list[InputRef]:
    """A JSONL manifest: one `{"custom_id": ..., "url": ...}` object per line."""
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InvalidInput("the manifest is not UTF-8 text (JSONL)") from exc
    entries: list[Any] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if len(entries) >= settings.max_images_per_job:
            raise _too_many(settings)
        try:
            entries.append(json.loads(line))
        except ValueError as exc:
            raise InvalidInput(f"manifest line {number} is not JSON: {exc}") from exc
    return parse_inputs(entries, settings, where="manifest line")


def parse_inputs(entries: list[Any], settings: Settings, where: str = "inputs") -> list[InputRef]:
    """Each entry checked; InvalidInput names the first wrong one (`inputs[3].url: ...`)."""
    if not entries:
        raise InvalidInput(f"no inputs: send at least one {{'url': ...}} ({where})")
    if len(entries) > settings.max_images_per_job:
        raise _too_many(settings)
    buckets = _buckets(settings)
    refs: list[InputRef] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        name = f"{where}[{index}]" if where == "inputs" else f"{where} {index + 1}"
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise InvalidInput(f"{name}: an object with a string `url` is required")
        unknown = set(entry) - {"url", "custom_id"}
        if unknown:
            raise InvalidInput(f"{name}: unknown field(s) {sorted(unknown)}; use url, custom_id")
        custom_id = entry.get("custom_id")
        if custom_id is not None:
            _check_custom_id(name, custom_id)
            if custom_id in seen:
                raise InvalidInput(f"{name}.custom_id {custom_id!r} is used twice in this job")
            seen.add(custom_id)
        refs.append(InputRef(_checked_url(name, entry["url"], buckets), custom_id))
    return refs


def list_source(source: str, settings: Settings) -> list[InputRef]:
    """Every object under an allowed bucket's prefix (`s3://bucket/prefix/`), as inputs
    whose custom_id is the key below the prefix; folders' placeholder keys are skipped."""
    bucket, _, prefix = source.removeprefix("s3://").partition("/")
    if not source.startswith("s3://") or not bucket:
        raise InvalidInput(f"source must be s3://bucket/prefix/, not {source[:200]!r}")
    if bucket not in _buckets(settings):
        raise InvalidInput(
            f"source: bucket {bucket!r} is not one this service reads (INPUT_ALLOWED_BUCKETS)"
        )
    keys = _keys_under(bucket, prefix, settings.max_images_per_job)
    if len(keys) > settings.max_images_per_job:
        raise _too_many(settings)
    refs = [InputRef(f"s3://{bucket}/{key}", key[len(prefix) :] or key) for key in keys]
    if not refs:
        raise InvalidInput(f"no objects under {source[:200]!r}")
    return refs


def _keys_under(bucket: str, prefix: str, limit: int) -> list[str]:
    """The object keys under `prefix` (folder placeholders aside), listing no further than
    one past `limit`: a prefix of millions costs a page, not the whole listing."""
    keys: list[str] = []
    try:
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            keys += [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/")]
            if len(keys) > limit:
                break
    except Exception as exc:
        raise ServiceUnavailable(f"cannot list s3://{bucket}/{prefix}: {exc}") from exc
    return keys


def staged_references(refs: list[InputRef]) -> list[StagedItem]:
    """The items a job of references holds: nothing is stored; workers fetch."""
    return [
        StagedItem(
            new_id(),
            position,
            _filename(ref),
            0,
            None,
            None,
            None,
            source_url=ref.url,
            custom_id=ref.custom_id if ref.custom_id is not None else ref.url,
        )
        for position, ref in enumerate(refs)
    ]


def _buckets(settings: Settings) -> set[str]:
    return {b.strip() for b in settings.input_allowed_buckets.split(",") if b.strip()}


def _filename(ref: InputRef) -> str:
    """What results call the item: the last part of its URL's path (or the URL)."""
    path = ref.url.split("?", 1)[0].rstrip("/")
    return path.rsplit("/", 1)[-1] or ref.url


def _check_custom_id(name: str, custom_id: Any) -> None:
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID_CHARS:
        raise InvalidInput(f"{name}.custom_id must be a string of 1 to {MAX_CUSTOM_ID_CHARS} chars")
    if unstorable(custom_id) or any(ord(c) < 32 for c in custom_id):
        raise InvalidInput(f"{name}.custom_id must not hold control characters or NUL")


def _checked_url(name: str, url: str, buckets: set[str]) -> str:
    if len(url) > MAX_URL_CHARS or unstorable(url) or any(ord(c) <= 32 for c in url):
        raise InvalidInput(
            f"{name}.url must be at most {MAX_URL_CHARS} characters, without spaces or controls"
        )
    if url.startswith("s3://"):
        bucket, _, key = url[5:].partition("/")
        if not bucket or not key:
            raise InvalidInput(f"{name}.url must be s3://bucket/key, not {url[:200]!r}")
        if bucket not in buckets:
            raise InvalidInput(
                f"{name}.url: bucket {bucket!r} is not one this service reads "
                "(INPUT_ALLOWED_BUCKETS)"
            )
        return url
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise InvalidInput(f"{name}.url {url[:200]!r} is not a valid URL: {exc}") from exc
    if parsed.scheme not in {"http", "https"} or not parsed.host:
        raise InvalidInput(f"{name}.url must be http(s)://… or s3://…, not {url[:200]!r}")
    if parsed.userinfo:
        raise InvalidInput(f"{name}.url must not carry credentials (user:password@)")
    return url


def _too_many(settings: Settings) -> LimitExceeded:
    return LimitExceeded(
        f"a job takes at most {settings.max_images_per_job} inputs (MAX_IMAGES_PER_JOB)"
    )
