"""What a job tells its webhook: started, progress, and the final event.

Each carries the job document as `GET /jobs/{id}` shows it at that moment; the
final event adds its items' outcomes with their `custom_id`s (`results`, up to
RESULTS_IN_EVENT items and RESULTS_EVENT_BYTES; `complete: false` beyond). The row is written by the
webhooks room (`shared.webhooks.events.record_event`) in the same transaction,
and delivered after its commit.
"""

from __future__ import annotations

from datetime import timedelta

from shared.db.models import Job, JobStatus, utcnow
from shared.jobs.documents import job_document, results_digest
from shared.unit_of_work import UnitOfWork
from shared.webhooks.events import FINAL_EVENTS, record_event


def announce(session: UnitOfWork, job: Job, event_type: str, *, results: bool = False) -> None:
    if not job.webhook_url:
        return
    session.flush()  # the document reads the items' latest state
    document = job_document(session, job)
    if results:
        document["results"] = results_digest(session, job)
    record_event(session, job, event_type, document)


def announce_started(session: UnitOfWork, jobs: list[Job]) -> None:
    for job in jobs:
        if "job.started" in (job.webhook_events or []):
            announce(session, job, "job.started")


def announce_final(session: UnitOfWork, job: Job) -> None:
    status = JobStatus(job.status)
    if status in FINAL_EVENTS:
        announce(session, job, FINAL_EVENTS[status], results=True)


def announce_progress(session: UnitOfWork, job: Job, interval_seconds: float) -> None:
    """At most one job.progress per interval, only for jobs that asked for it."""
    if "job.progress" not in (job.webhook_events or []) or JobStatus(job.status).is_final:
        return
    now = utcnow()
    last = job.progress_notified_at
    if last is not None and now - last < timedelta(seconds=interval_seconds):
        return
    job.progress_notified_at = now
    announce(session, job, "job.progress")
