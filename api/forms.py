"""What the job routes parse from a request before a service sees it.

Services take parsed values (a metadata dict, a list of event names, a list of
uploads) and raise domain errors; this module reads the multipart form's
strings, applies the form's own limits and words what a client must send.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import UploadFile

from shared.errors import InvalidInput, LimitExceeded
from shared.jobs.intake import Upload, is_zip
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
