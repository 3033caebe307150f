"""Webhook events, written in the same transaction as the change they announce.

Each event row is committed with the job's new state and put in the session's
outbox (`shared.services.outbox`), so its delivery is enqueued only after that
commit. A lost enqueue is found again by the dispatcher loop, which sends every
pending event that is due.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from shared.db.models import Job, JobStatus, WebhookEvent, WebhookEventStatus, utcnow
from shared.errors import InvalidInput
from shared.services import outbox
from shared.services.documents import job_document

FINAL_EVENTS = {
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.PARTIALLY_SUCCEEDED: "job.partially_succeeded",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}
OPTIONAL_EVENTS = ("job.started", "job.progress")


def parse_event_names(raw: str | None) -> list[str]:
    names = [name.strip() for name in (raw or "").split(",") if name.strip()]
    unknown = sorted(set(names) - set(OPTIONAL_EVENTS))
    if unknown:
        raise InvalidInput(
            f"unknown webhook_events {', '.join(unknown)}; "
            f"choose from {', '.join(OPTIONAL_EVENTS)} (the final job.* event is always sent)"
        )
    return sorted(set(names))


def record_event(session: Session, job: Job, event_type: str) -> WebhookEvent | None:
    if not job.webhook_url:
        return None
    session.flush()  # the document reads the items' latest state
    body: dict[str, Any] = {
        "type": event_type,
        "timestamp": utcnow().isoformat().replace("+00:00", "Z"),
        "data": job_document(session, job),
    }
    row = WebhookEvent(
        id=f"msg_{uuid.uuid4().hex}",
        job_id=job.id,
        type=event_type,
        url=job.webhook_url,
        body=json.dumps(body, separators=(",", ":")),
        status=WebhookEventStatus.PENDING,
        attempts=0,
        next_attempt_at=utcnow(),
        created_at=utcnow(),
    )
    session.add(row)
    outbox.add_event(session, row.id)
    return row


def record_final_event(session: Session, job: Job) -> None:
    status = JobStatus(job.status)
    if status in FINAL_EVENTS:
        record_event(session, job, FINAL_EVENTS[status])


def record_progress_event(session: Session, job: Job, interval_seconds: float) -> None:
    """At most one job.progress per interval, only for jobs that asked for it."""
    if "job.progress" not in (job.webhook_events or []) or JobStatus(job.status).is_final:
        return
    now = utcnow()
    last = job.progress_notified_at
    if last is not None and now - last < timedelta(seconds=interval_seconds):
        return
    job.progress_notified_at = now
    record_event(session, job, "job.progress")
