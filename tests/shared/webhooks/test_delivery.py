"""Delivery: a receiver gets a job's events in order."""

from __future__ import annotations

from datetime import timedelta

from shared.db.models import (
    WebhookEvent,
    WebhookEventStatus,
    new_id,
    utcnow,
)
from shared.webhooks.delivery import Attempt, Outcome, claim_event, due_events, record_attempt
from tests.shared import database as db
from tests.shared.database import (
    SENT,
    add_job,
    scope,
)


def test_a_receiver_gets_a_job_events_in_order(database: str) -> None:
    job_id = add_job(1, webhook_events=["job.started", "job.progress"])
    written = utcnow()
    names = ["job.started", "job.progress", "job.succeeded"]
    ids = [f"msg_{i}_{new_id()[:30]}" for i in range(3)]
    with scope() as session:
        for i, (event_id, kind) in enumerate(zip(ids, names, strict=True)):
            session.add(
                WebhookEvent(
                    id=event_id,
                    job_id=job_id,
                    type=kind,
                    url="https://hooks.example/in",
                    body="{}",
                    status="pending",
                    attempts=0,
                    next_attempt_at=written,
                    created_at=written + timedelta(milliseconds=i),
                )
            )
    with scope(write=False) as session:
        assert due_events(session) == [ids[0]]  # the later ones wait behind it
    with scope() as session:
        assert claim_event(session, ids[2], db.SETTINGS) is None
        first = claim_event(session, ids[0], db.SETTINGS)
    assert first is not None
    delivered = Outcome(WebhookEventStatus.DELIVERED, 200, None, None)
    before = len(SENT.events)
    with scope() as session:
        record_attempt(session, first, Attempt(delivered, utcnow(), 1.0))
    assert SENT.events[before:] == [ids[1]]  # the next one goes out at once, after the commit
