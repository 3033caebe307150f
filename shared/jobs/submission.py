"""Accepting work: store the uploads, then add the job and its message to the unit of work."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy.exc import IntegrityError

from shared import metrics, outbox, unit_of_work
from shared.db.models import Job, JobSource, new_id
from shared.errors import InvalidInput
from shared.jobs.idempotency import earlier_job, idempotency_request, remember
from shared.jobs.intake import Upload, stage_uploads, storage_prefix
from shared.jobs.records import create_job
from shared.jobs.references import InputRef, staged_references
from shared.jobs.scheduling import LANE_WAKE_UP
from shared.jobs.versions import pin_version
from shared.settings import Settings
from shared.storage import Storage
from shared.unit_of_work import UnitOfWork
from shared.webhooks.events import check_event_names
from shared.webhooks.guard import check_webhook_url, parse_networks


def webhook_target(url: str | None, settings: Settings) -> str | None:
    if not url:
        return None
    if not settings.webhook_secret_list:
        raise InvalidInput("webhooks are not enabled on this server: WEBHOOK_SECRETS is not set")
    check_webhook_url(url, parse_networks(settings.webhook_allowed_networks))
    return url


@dataclass(frozen=True)
class Submission:
    job: Job
    replayed: bool  # an earlier request with the same Idempotency-Key made this job


def submit_job(
    session: UnitOfWork,
    storage: Storage,
    settings: Settings,
    uploads: list[Upload],
    *,
    owner_id: str | None = None,
    idempotency_key: str | None = None,
    webhook_url: str | None = None,
    webhook_events: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    source: JobSource = JobSource.JOBS,
    job_id: str | None = None,
    model: str | None = None,
    references: list[InputRef] | None = None,
) -> Submission:
    """Store the uploads, then add the job and its message; the caller commits.

    Files are stored before the write transaction begins, so no lock is held while
    a large zip is written. If the transaction does not commit, the stored files
    go with it (`on_rollback`); the job message is sent only after the commit (the
    outbox). An `Idempotency-Key` seen before answers with the first job, and this
    request's files are removed. A caller that must know the job's id before it
    is committed (`/predict`, to be told when it ends) names it with `job_id`.
    """
    events = check_event_names(webhook_events or [])
    metadata = metadata or {}
    fields = {
        "webhook_url": webhook_url or "",
        "webhook_events": ",".join(events),
        "metadata": json.dumps(metadata, sort_keys=True, separators=(",", ":")),
        "model": model or "",
    }
    if references is not None:  # inputs by reference: workers fetch them, nothing is stored
        fields["inputs"] = json.dumps([[ref.url, ref.custom_id] for ref in references])
    idempotency = idempotency_request(idempotency_key, owner_id, uploads, fields)
    webhook = webhook_target(webhook_url, settings)
    job_id = job_id or new_id()
    if references is not None:
        staged = staged_references(references)
    else:
        staged = stage_uploads(uploads, job_id, storage, settings)
    unit_of_work.on_rollback(session, lambda: storage.delete_prefix(storage_prefix(job_id)))
    session.begin_write()
    model_version = pin_version(session, model, settings)
    if idempotency is not None and (job := earlier_job(session, idempotency)) is not None:
        storage.delete_prefix(storage_prefix(job_id))
        return Submission(job, replayed=True)
    add_job = partial(
        create_job,
        session,
        job_id,
        staged,
        owner_id=owner_id,
        webhook_url=webhook,
        webhook_events=events,
        metadata=metadata,
        source=source,
        model_version=model_version,
    )
    if idempotency is None:  # nothing can collide: no savepoint's two round trips
        job = add_job()
        _wake_a_worker(session, job)
        return Submission(job, replayed=False)
    try:
        with session.begin_nested():
            job = add_job()
            remember(session, idempotency, job_id)
    except IntegrityError:
        # Postgres: a concurrent request with the same key committed first (SQLite's
        # write lock makes the check above enough). Its job is this request's answer.
        if idempotency is None or (job := earlier_job(session, idempotency)) is None:
            raise
        metrics.discard_increments(session)  # counted for the job that was not inserted
        storage.delete_prefix(storage_prefix(job_id))
        return Submission(job, replayed=True)
    _wake_a_worker(session, job)
    return Submission(job, replayed=False)


def _wake_a_worker(session: UnitOfWork, job: Job) -> None:
    # A /predict job needs only a worker awake: every worker serves the lane between
    # requests, so one wake-up message waits for all of them, not one per call.
    outbox.add_job(session, LANE_WAKE_UP if job.source == JobSource.PREDICT else job.id)
