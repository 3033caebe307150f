"""A job's webhook events are written with the state they announce."""

from __future__ import annotations

import json

from sqlalchemy import select

from shared.db.models import (
    JobStatus,
    WebhookEvent,
)
from shared.jobs.processing import (
    record_results,
)
from tests.shared.database import (
    SENT,
    add_job,
    claim,
    job_row,
    results_for,
    scope,
)


def test_webhook_events_are_written_with_the_state_they_announce(database: str) -> None:
    job_id = add_job(2, webhook_events=["job.started"])
    quiet = add_job(1)  # no webhook_url: no events
    with scope() as session:
        claimed = claim(session, 1, "v1")
    with scope() as session:
        record_results(session, results_for(claimed), worker="w", inference_ms=1)
    with scope() as session:
        rest = claim(session, 5, "v1")
    with scope() as session:
        record_results(session, results_for(rest), worker="w", inference_ms=1)
    with scope(write=False) as session:
        events = session.scalars(select(WebhookEvent).order_by(WebhookEvent.created_at)).all()
        assert {e.job_id for e in events} == {job_id}
        assert [e.type for e in events] == ["job.started", "job.succeeded"]
        final = json.loads(events[-1].body)
        assert final["data"]["status"] == "succeeded"
        assert final["data"]["summary"] == {"sea": 2}
        assert all(e.id.startswith("msg_") and e.status == "pending" for e in events)
    assert [e.id for e in events] == SENT.events[-2:]  # each sent after the commit that wrote it
    assert job_row(quiet).status == JobStatus.SUCCEEDED  # claimed alongside, finished too
