"""The worker's side of the database: claim queued items, record results, recover stragglers.

Every write is guarded by the item's current status, so a task that runs twice
(a redelivered message, a requeued item) writes each result once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.orm import Session

from shared import metrics
from shared.db.models import Batch, Item, ItemStatus, Job, JobStatus, new_id, utcnow
from shared.services.progress import refresh_job
from shared.webhooks.events import record_event, record_progress_event


@dataclass(frozen=True)
class Claimed:
    id: str
    job_id: str
    filename: str
    storage_key: str | None
    sha256: str | None = None


@dataclass(frozen=True)
class ItemResult:
    id: str
    job_id: str
    label: str | None
    confidence: float | None
    scores: dict[str, float] | None
    error: str | None
    reused_from: str | None = None
    model_version: str | None = None  # the model (weights and precision) that made it


def claim_items(session: Session, job_id: str, limit: int, model_version: str) -> list[Claimed]:
    """The claim step a task runs: mark items running, then start the jobs they belong to."""
    claimed = mark_running(session, job_id, limit)
    started = start_jobs(session, {c.job_id for c in claimed}, model_version)
    record_started_events(session, started)
    return claimed


def mark_running(session: Session, job_id: str, limit: int) -> list[Claimed]:
    """Mark up to `limit` queued items running: this job's first, then other jobs' fairly.

    Other jobs' items are taken lowest position first, so a one-image job is not
    stuck behind the thousands of items of a big one, and single-image jobs from
    many clients share a forward pass.
    """
    own = _queued_ids(session, limit, Item.job_id == job_id)
    others = (
        _queued_ids(session, limit - len(own), Item.job_id != job_id) if len(own) < limit else []
    )
    ids = own + others
    if not ids:
        return []
    claimed = list(
        session.execute(
            update(Item)
            .where(Item.id.in_(ids), Item.status == ItemStatus.QUEUED)
            .values(status=ItemStatus.RUNNING, started_at=utcnow(), attempts=Item.attempts + 1)
            .returning(
                Item.id, Item.job_id, Item.filename, Item.storage_key, Item.position, Item.sha256
            )
        ).all()
    )
    claimed.sort(key=lambda row: (row.job_id != job_id, row.position))
    return [
        Claimed(row.id, row.job_id, row.filename, row.storage_key, row.sha256) for row in claimed
    ]


def start_jobs(session: Session, job_ids: set[str], model_version: str) -> list[Job]:
    """Jobs still queued become running, with the model version that runs them."""
    starting = session.scalars(
        select(Job).where(Job.id.in_(job_ids), Job.status == JobStatus.QUEUED).with_for_update()
    ).all()
    now = utcnow()
    for job in starting:
        job.status, job.started_at, job.model_version = JobStatus.RUNNING, now, model_version
    return list(starting)


def record_started_events(session: Session, jobs: list[Job]) -> None:
    for job in jobs:
        if "job.started" in (job.webhook_events or []):
            record_event(session, job, "job.started")


def reuse_known_results(
    session: Session, claimed: list[Claimed], model_version: str, *, worker: str
) -> tuple[list[Claimed], list[Claimed]]:
    """The reuse step a task runs: find known results, record them; (reused, still to run).

    `reused` are the items this call wrote, whose uploads are now free to delete; an
    item with a known result that something else ended meanwhile is not run either.
    """
    known = find_known_results(session, claimed, model_version)
    written = record_results(session, known, worker=worker, inference_ms=0.0, batch=False)
    settled = {result.id for result in known}
    return (
        [c for c in claimed if c.id in written],
        [c for c in claimed if c.id not in settled],
    )


def find_known_results(
    session: Session, claimed: list[Claimed], model_version: str
) -> list[ItemResult]:
    """Results this model version already made for the same bytes of the same owner.

    Reuse stays inside the owner (the API key, or the pool of anonymous uploads):
    a result reused across keys would tell one tenant what another one sent.
    """
    hashes = {c.sha256 for c in claimed if c.sha256}
    if not hashes:
        return []
    owner_of = {
        row.id: row.owner_id
        for row in session.execute(
            select(Job.id, Job.owner_id).where(Job.id.in_({c.job_id for c in claimed}))
        )
    }
    known: dict[tuple[str | None, str], Any] = {}
    rows = session.execute(
        select(Job.owner_id, Item.sha256, Item.id, Item.label, Item.confidence, Item.scores)
        .join(Job, Job.id == Item.job_id)
        .where(
            Item.sha256.in_(hashes),
            Item.status == ItemStatus.SUCCEEDED,
            Item.reused_from.is_(None),
            Item.model_version == model_version,
        )
    )
    for row in rows:
        known.setdefault((row.owner_id, row.sha256), row)
    results = []
    for item in claimed:
        match = known.get((owner_of.get(item.job_id), item.sha256 or ""))
        if match is not None:
            results.append(
                ItemResult(
                    item.id,
                    item.job_id,
                    match.label,
                    match.confidence,
                    match.scores,
                    None,
                    reused_from=match.id,
                    model_version=model_version,
                )
            )
    return results


def _queued_ids(session: Session, limit: int, *criteria: object) -> list[str]:
    query = (
        select(Item.id)
        .where(Item.status == ItemStatus.QUEUED, *criteria)  # type: ignore[arg-type]
        .order_by(Item.position, Item.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)  # Postgres: claimers never wait on each other
    )
    return list(session.scalars(query))


def record_results(
    session: Session,
    results: list[ItemResult],
    *,
    worker: str,
    inference_ms: float,
    progress_interval_seconds: float = 10.0,
    batch: bool = True,
) -> set[str]:
    """The record step a task runs: write items, note the batch, settle the jobs.

    Returns the ids it wrote: only their uploads are this run's to delete (another
    run may hold an item the reconciler took back from this one).
    """
    batch_id = new_id() if batch else None
    written = write_item_results(session, results, inference_ms, batch_id)
    if not written:
        return set()
    if batch_id is not None:
        record_batch(session, batch_id, written, worker=worker, inference_ms=inference_ms)
    count_finished_items(session, written)
    settle_jobs(session, written, progress_interval_seconds)
    return {result.id for result in written}


def write_item_results(
    session: Session, results: list[ItemResult], inference_ms: float, batch_id: str | None
) -> list[ItemResult]:
    """Write results over items still running; the ones written.

    A cancel, or the reconciler's requeue of a slow batch, may have ended or moved
    some items since they were claimed: those are neither written nor counted.
    """
    if not results:
        return []
    still_running = set(
        session.scalars(
            select(Item.id)
            .where(Item.id.in_([r.id for r in results]), Item.status == ItemStatus.RUNNING)
            .with_for_update()
        )
    )
    written = [r for r in results if r.id in still_running]
    if not written:
        return []
    table = cast(Table, Item.__table__)
    session.connection().execute(
        table.update()
        .where(table.c.id == bindparam("item_id"), table.c.status == ItemStatus.RUNNING)
        .values(
            status=bindparam("new_status"),
            **{"class": bindparam("new_label")},
            confidence=bindparam("new_confidence"),
            scores=bindparam("new_scores"),
            error=bindparam("new_error"),
            reused_from=bindparam("new_reused_from"),
            model_version=bindparam("new_model_version"),
            batch_id=batch_id,
            finished_at=utcnow(),
            # Each item's share of the forward pass it was part of, not the whole pass.
            inference_ms=round(inference_ms / len(results), 3),
        ),
        [
            {
                "item_id": r.id,
                "new_status": ItemStatus.FAILED if r.error else ItemStatus.SUCCEEDED,
                "new_label": r.label,
                "new_confidence": r.confidence,
                "new_scores": r.scores,
                "new_error": r.error,
                "new_reused_from": r.reused_from,
                "new_model_version": r.model_version,
            }
            for r in written
        ],
    )
    return written


def record_batch(
    session: Session,
    batch_id: str,
    written: list[ItemResult],
    *,
    worker: str,
    inference_ms: float,
) -> None:
    """One forward pass: a batch row and the batch histograms."""
    size = sum(r.error is None for r in written)
    session.add(
        Batch(
            id=batch_id,
            worker=worker,
            size=size,
            jobs=len({r.job_id for r in written}),
            inference_ms=inference_ms,
            created_at=utcnow(),
        )
    )
    metrics.observe(session, metrics.BATCH_SIZE, size)
    metrics.observe(session, metrics.BATCH_INFERENCE_SECONDS, inference_ms / 1000)


def count_finished_items(session: Session, written: list[ItemResult]) -> None:
    failed = sum(r.error is not None for r in written)
    metrics.items_finished(session, ItemStatus.FAILED, failed)
    metrics.items_finished(session, ItemStatus.SUCCEEDED, len(written) - failed)


def settle_jobs(
    session: Session, written: list[ItemResult], progress_interval_seconds: float
) -> None:
    """Recount each touched job, send its progress event, observe its items' latency."""
    per_job = Counter(r.job_id for r in written)
    now = utcnow()
    for job_id in sorted(per_job):  # one lock order: no deadlocks
        job = refresh_job(session, job_id)
        if job is not None:
            record_progress_event(session, job, progress_interval_seconds)
            latency = (now - job.created_at).total_seconds()
            metrics.observe(session, metrics.ITEM_LATENCY_SECONDS, latency, per_job[job_id])


def queued_count(session: Session, job_id: str) -> int:
    return int(
        session.scalar(
            select(func.count()).where(Item.job_id == job_id, Item.status == ItemStatus.QUEUED)
        )
        or 0
    )


def requeue_stale(session: Session, older_than_seconds: float, max_attempts: int) -> list[str]:
    """Recover from lost workers and lost messages; returns the jobs to enqueue again.

    Items left running longer than the deadline (their worker died or hung) go back
    to queued, unless they were claimed `max_attempts` times already: those fail
    alone, so one image that kills every worker that takes it cannot circle forever.
    Jobs with items queued longer than the deadline (their message was lost) are
    enqueued again; jobs whose items all ended are settled.
    """
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    stale = (Item.status == ItemStatus.RUNNING, Item.started_at < cutoff)
    abandoned = session.execute(
        update(Item)
        .where(*stale, Item.attempts >= max_attempts)
        .values(
            status=ItemStatus.FAILED,
            finished_at=utcnow(),
            error=(
                f"abandoned after {max_attempts} attempts (MAX_ITEM_ATTEMPTS): each time, "
                "the worker holding it died or ran out of time"
            ),
        )
        .returning(Item.job_id)
    ).scalars()
    abandoned_jobs = Counter(abandoned)
    metrics.items_finished(session, ItemStatus.FAILED, sum(abandoned_jobs.values()))
    requeued = session.execute(
        update(Item).where(*stale).values(status=ItemStatus.QUEUED).returning(Item.job_id)
    ).scalars()
    jobs = set(requeued)
    jobs.update(
        session.scalars(
            select(Item.job_id)
            .where(Item.status == ItemStatus.QUEUED, Item.created_at < cutoff)
            .distinct()
        )
    )
    unfinished = select(Item.job_id).where(Item.status.in_([ItemStatus.QUEUED, ItemStatus.RUNNING]))
    unsettled = session.scalars(
        select(Job.id).where(
            Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]), Job.id.not_in(unfinished)
        )
    ).all()
    for job_id in sorted((set(unsettled) | set(abandoned_jobs)) - jobs):
        refresh_job(session, job_id)
    return sorted(jobs)
