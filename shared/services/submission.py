"""Accepting work: store the uploads, commit the job, then enqueue it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from sqlalchemy.orm import Session

from shared.db.models import Job, new_id
from shared.db.session import begin_write
from shared.errors import InvalidInput
from shared.services.intake import Upload, stage_uploads, storage_prefix
from shared.services.jobs import create_job
from shared.settings import Settings
from shared.storage import Storage

log = logging.getLogger(__name__)


def parse_metadata(raw: str | None) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"metadata must be a JSON object: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise InvalidInput('metadata must be a JSON object, like {"batch": "2024-05"}')
    return value


def check_webhook_url(url: str | None) -> str | None:
    if not url:
        return None
    parsed = urlparse(url)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise InvalidInput(f"webhook_url must be an http(s) URL with a host, not {url!r}")
    return url


def submit_job(
    session: Session,
    storage: Storage,
    settings: Settings,
    uploads: list[Upload],
    *,
    enqueue: Callable[[str], None],
    webhook_url: str | None = None,
    metadata: str | None = None,
) -> Job:
    """Store, commit, enqueue, in that order: a message never names an uncommitted job.

    A failed enqueue does not fail the request: the job is committed as queued and
    the workers' reconciler enqueues it again after REQUEUE_AFTER_SECONDS.
    """
    parsed_metadata = parse_metadata(metadata)
    webhook = check_webhook_url(webhook_url)
    job_id = new_id()
    staged = stage_uploads(uploads, job_id, storage, settings)
    try:
        begin_write(session)
        job = create_job(session, job_id, staged, webhook_url=webhook, metadata=parsed_metadata)
        session.commit()
    except BaseException:
        session.rollback()
        storage.delete_prefix(storage_prefix(job_id))
        raise
    try:
        enqueue(job_id)
    except Exception:
        log.exception("could not enqueue job %s; the reconciler will", job_id)
    return job
