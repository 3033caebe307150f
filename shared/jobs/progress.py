"""Job counts and final status, recomputed from the items: the one rule for both."""

from __future__ import annotations

from sqlalchemy import func, select

from shared import metrics, outbox
from shared.db.models import Item, ItemStatus, Job, JobStatus, utcnow
from shared.jobs.events import announce_final
from shared.unit_of_work import UnitOfWork


def final_status(succeeded: int, failed: int) -> JobStatus:
    if failed == 0 and succeeded > 0:
        return JobStatus.SUCCEEDED
    if succeeded == 0:
        return JobStatus.FAILED
    return JobStatus.PARTIALLY_SUCCEEDED


def failure_summary(session: UnitOfWork, job: Job) -> str:
    """Why a job that classified nothing failed: its first item's reason, and how many."""
    first = session.scalar(
        select(Item.error)
        .where(Item.job_id == job.id, Item.status == ItemStatus.FAILED)
        .order_by(Item.position)
        .limit(1)
    )
    others = f" (and {job.failed - 1} more)" if job.failed > 1 else ""
    return f"no image could be classified: {first or 'every item failed'}{others}"


def refresh_job(session: UnitOfWork, job_id: str) -> Job | None:
    """Lock the job row, recount its items and settle its status; idempotent.

    The row lock serialises workers finishing the last items of one job, so the
    last of them always sees every other's results and the job always ends.
    """
    job = session.scalars(select(Job).where(Job.id == job_id).with_for_update()).one_or_none()
    if job is None:
        return None
    counts = dict(
        session.execute(
            select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status)
        ).all()
    )
    job.succeeded = int(counts.get(ItemStatus.SUCCEEDED, 0))
    job.failed = int(counts.get(ItemStatus.FAILED, 0))
    job.skipped = int(counts.get(ItemStatus.SKIPPED, 0))
    unfinished = int(counts.get(ItemStatus.QUEUED, 0)) + int(counts.get(ItemStatus.RUNNING, 0))
    if unfinished == 0 and job.status in {JobStatus.QUEUED, JobStatus.RUNNING}:
        job.status = final_status(job.succeeded, job.failed)
        if job.status == JobStatus.FAILED:
            job.error = failure_summary(session, job)
        job.finished_at = utcnow()
        job.started_at = job.started_at or job.finished_at
        announce_final(session, job)
        metrics.job_finished(session, job)
        outbox.add_finished(session, job.id)
    return job
