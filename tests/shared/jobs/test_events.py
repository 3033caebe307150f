"""A job's webhook events are written with the state they announce."""

from __future__ import annotations

import json

from sqlalchemy import select

from shared.db.models import (
    JobStatus,
    WebhookEvent,
)
from shared.jobs.documents import results_digest
from shared.jobs.processing import (
    record_results,
)
from shared.jobs.records import get_job
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
        # The final event names each item by the caller's id, so a small job needs no fetch.
        assert final["data"]["results"]["complete"] is True
        assert [
            (r["custom_id"], r["status"], r["class"]) for r in final["data"]["results"]["items"]
        ] == [
            ("img0.jpg", "succeeded", "sea"),
            ("img1.jpg", "succeeded", "sea"),
        ]
        assert "results" not in json.loads(events[0].body)["data"]  # started: the document only
        assert all(e.id.startswith("msg_") and e.status == "pending" for e in events)
    assert [e.id for e in events] == SENT.events[-2:]  # each sent after the commit that wrote it
    assert job_row(quiet).status == JobStatus.SUCCEEDED  # claimed alongside, finished too


def test_a_large_job_s_final_event_carries_the_first_items_and_says_it_is_incomplete(
    database: str,
) -> None:
    job_id = add_job(2, failed=1)
    with scope(write=False) as session:
        digest = results_digest(session, get_job(session, job_id), limit=2)
        whole = results_digest(session, get_job(session, job_id), limit=3)
    assert digest["complete"] is False
    assert [r["custom_id"] for r in digest["items"]] == ["img0.jpg", "img1.jpg"]
    assert whole["complete"] is True
    # Bounded in bytes too, whatever the names: each item here is about 110 bytes.
    with scope(write=False) as session:
        small = results_digest(session, get_job(session, job_id), limit=3, max_bytes=300)
    assert small["complete"] is False
    assert [r["custom_id"] for r in small["items"]] == ["img0.jpg", "img1.jpg"]
    assert whole["items"][2] == {
        "custom_id": "bad0.txt",
        "filename": "bad0.txt",
        "status": "failed",
        "class": None,
        "confidence": None,
        "error": "not an image",
    }
