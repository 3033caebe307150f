"""What the job routes parse from a request before a service sees it.

Services take parsed values (a metadata dict, a list of event names, a list of
uploads) and raise domain errors; this module reads the multipart form's
strings, applies the form's own limits and words what a client must send.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fastapi import Request, UploadFile

from shared.errors import InvalidInput, LimitExceeded
from shared.jobs.intake import Upload, is_zip
from shared.jobs.references import InputRef, list_source, parse_inputs, parse_manifest
from shared.settings import Settings
from shared.text_rules import parse_json_object

# A model version is a short name (`jobs.model_version` holds 64 characters).
MAX_MODEL_NAME = 64
JOB_FILES_FIELD = "send an image or a .zip as the multipart field `file` (more as `files`)"
ONE_IMAGE_FIELD = "send one image as the multipart field `file`"


@dataclass(frozen=True)
class JobFields:
    webhook_url: str | None
    webhook_events: list[str]
    metadata: dict[str, Any]


def job_fields(
    max_field_bytes: int,
    *,
    webhook_url: str | None,
    webhook_events: str | None,
    metadata: str | None,
) -> JobFields:
    """The job form's text fields, parsed: sizes first, then JSON and the event list."""
    fields = {"webhook_url": webhook_url, "webhook_events": webhook_events, "metadata": metadata}
    for name, value in fields.items():
        size = len(value.encode()) if value is not None else 0
        if size > max_field_bytes:
            raise LimitExceeded(
                f"form field {name!r} is {size:,} bytes, over the limit of "
                f"{max_field_bytes:,} (MAX_FORM_FIELD_BYTES)"
            )
    return JobFields(
        webhook_url or None,
        [name.strip() for name in (webhook_events or "").split(",") if name.strip()],
        parse_json_object("metadata", metadata) if metadata else {},
    )


def job_uploads(file: UploadFile | None, files: list[UploadFile] | None) -> list[Upload]:
    parts = ([file] if file is not None else []) + list(files or [])
    if not parts:
        raise InvalidInput(f"no file uploaded: {JOB_FILES_FIELD}")
    return [Upload(part.filename or "upload", part.file) for part in parts]


def one_image(file: UploadFile | None) -> Upload:
    """For calls that answer with one label: an archive is refused before anything is stored."""
    if file is None:
        raise InvalidInput(f"no file uploaded: {ONE_IMAGE_FIELD}")
    upload = Upload(file.filename or "upload", file.file)
    if is_zip(upload):
        raise InvalidInput(
            f"{upload.filename!r} is a zip archive; POST /predict takes one image "
            "(send archives to POST /jobs)"
        )
    return upload


def model_name(raw: str | None) -> str | None:
    """The `model` field: a version name from GET /models, or None for the default."""
    if not raw:
        return None
    if len(raw) > MAX_MODEL_NAME or not raw.isprintable():
        raise InvalidInput(
            f"model must be a version name of at most {MAX_MODEL_NAME} printable "
            "characters, as GET /models lists them"
        )
    return raw


@dataclass(frozen=True)
class JsonJob:
    """`POST /jobs` as JSON: inputs by reference and the job's fields, as the form has them."""

    inputs: list[Any] | None
    source: str | None  # s3://bucket/prefix/: every object under it
    webhook_url: str | None
    webhook_events: str | None
    metadata: str | None
    model: str | None


MAX_JSON_BODY_BYTES = 16 * 1024 * 1024
# 10,000 lines of the longest URL and custom_id fit in about 23 MB; a manifest is parsed
# in memory, so it gets a bound of its own rather than an upload's 512 MB.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
JSON_JOB_FIELDS = {"inputs", "source", "webhook_url", "webhook_events", "metadata", "model"}


async def json_job(request: Request) -> JsonJob | None:
    """The JSON body of `POST /jobs`, when it has one (a multipart request has none).

    The fields come back as the form would carry them (metadata as JSON text, the
    events comma-separated), so one parser checks both kinds of request alike.
    """
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/json":
        return None
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_JSON_BODY_BYTES:
            raise LimitExceeded(
                f"a JSON job is at most {MAX_JSON_BODY_BYTES:,} bytes; send a larger batch as "
                "a JSONL manifest (multipart field `manifest`)"
            )
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"the request body is not JSON: {exc}") from exc
    if not isinstance(body, dict) or not (
        isinstance(body.get("inputs"), list) or isinstance(body.get("source"), str)
    ):
        raise InvalidInput(
            f"no file uploaded and no inputs: {JOB_FILES_FIELD}, or send JSON "
            '{"inputs": [{"url": ...}, ...]} or {"source": "s3://bucket/prefix/"}'
        )
    unknown = set(body) - JSON_JOB_FIELDS
    if unknown:
        raise InvalidInput(
            f"unknown field(s) {sorted(unknown)}; a JSON job takes {sorted(JSON_JOB_FIELDS)}"
        )
    events = body.get("webhook_events")
    metadata = body.get("metadata")
    for name in ("webhook_url", "model"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise InvalidInput(f"{name} must be a string")
    if events is not None and not (
        isinstance(events, list) and all(isinstance(e, str) for e in events)
    ):
        raise InvalidInput("webhook_events must be a list of event names")
    if "inputs" in body and "source" in body:
        raise InvalidInput("send inputs or a source, not both")
    return JsonJob(
        inputs=body.get("inputs"),
        source=body.get("source"),
        webhook_url=body.get("webhook_url"),
        webhook_events=",".join(events) if events else None,
        metadata=json.dumps(metadata) if metadata is not None else None,
        model=body.get("model"),
    )


def job_references(
    body: JsonJob | None, manifest: UploadFile | None, has_files: bool, settings: Settings
) -> list[InputRef] | None:
    """The inputs by reference a request names (None: it uploads files instead)."""
    if body is None and manifest is None:
        return None
    if has_files or (body is not None and manifest is not None):
        raise InvalidInput("send files, a JSON body of inputs, or a manifest: one of them")
    if body is not None and body.source is not None:
        return list_source(body.source, settings)
    if body is not None:
        return parse_inputs(body.inputs or [], settings)
    assert manifest is not None
    text = manifest.file.read(MAX_MANIFEST_BYTES + 1)
    if len(text) > MAX_MANIFEST_BYTES:
        raise LimitExceeded(f"a manifest is at most {MAX_MANIFEST_BYTES:,} bytes")
    return parse_manifest(text, settings)
