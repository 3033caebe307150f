"""Webhook events, written in the same transaction as the change they announce.

Which events a job sends, and the job document they carry, are the job's own
business (`shared.jobs.events`); this module only writes the row.

Each event row is committed with the job's new state and put in the session's
outbox (`shared.outbox`), so its delivery is enqueued only after that
commit. A lost enqueue is found again by the dispatcher loop, which sends every
pending event that is due.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from shared import outbox
from shared.db.models import Job, JobStatus, WebhookEvent, WebhookEventStatus, utcnow
from shared.errors import InvalidInput
from shared.unit_of_work import UnitOfWork

FINAL_EVENTS = {
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.PARTIALLY_SUCCEEDED: "job.partially_succeeded",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}
OPTIONAL_EVENTS = ("job.started", "job.progress")


def check_event_names(names: list[str]) -> list[str]:
    """The optional events a job asked for, sorted and once each; unknown names refused."""
    unknown = sorted(set(names) - set(OPTIONAL_EVENTS))
    if unknown:
        raise InvalidInput(
            f"unknown webhook_events {', '.join(unknown)}; "
            f"choose from {', '.join(OPTIONAL_EVENTS)} (the final job.* event is always sent)"
        )
    return sorted(set(names))


def record_event(
    session: UnitOfWork, job: Job, event_type: str, document: dict[str, Any]
) -> WebhookEvent | None:
    """An event row for `job`'s webhook carrying `document`, sent after the commit."""
    if not job.webhook_url:
        return None
    body: dict[str, Any] = {
        "type": event_type,
        "timestamp": utcnow().isoformat().replace("+00:00", "Z"),
        "data": document,
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
