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
    """Lock the job row, recount its items and settle its status; idempotent."""
    return refresh_jobs(session, [job_id]).get(job_id)


def refresh_jobs(session: UnitOfWork, job_ids: list[str]) -> dict[str, Job]:
    """Lock the jobs' rows, recount their items and settle their statuses; idempotent.

    The row locks serialise workers finishing the last items of one job, so the
    last of them always sees every other's results and the job always ends. The
    rows are locked in id order (one order for every worker: no deadlocks), and
    every job's items are counted in one statement, whatever the number of jobs.
    Every writer takes item rows before job rows (a batch, a claim, a take-back, a
    cancel), so callers lock or update the items they change before calling this.
    """
    if not job_ids:
        return {}
    ids = sorted(set(job_ids))
    jobs = {
        job.id: job
        for job in session.scalars(
            select(Job).where(Job.id.in_(ids)).order_by(Job.id).with_for_update()
        )
    }
    counts: dict[str, dict[str, int]] = {job_id: {} for job_id in jobs}
    for job_id, status, number in session.execute(
        select(Item.job_id, Item.status, func.count())
        .where(Item.job_id.in_(list(jobs)))
        .group_by(Item.job_id, Item.status)
    ):
        counts[job_id][status] = int(number)
    for job_id in ids:
        if job_id in jobs:
            _settle(session, jobs[job_id], counts[job_id])
    return jobs


def _settle(session: UnitOfWork, job: Job, counts: dict[str, int]) -> None:
    job.succeeded = counts.get(ItemStatus.SUCCEEDED, 0)
    job.failed = counts.get(ItemStatus.FAILED, 0)
    job.skipped = counts.get(ItemStatus.SKIPPED, 0)
    unfinished = counts.get(ItemStatus.QUEUED, 0) + counts.get(ItemStatus.RUNNING, 0)
    if unfinished == 0 and job.status in {JobStatus.QUEUED, JobStatus.RUNNING}:
        job.status = final_status(job.succeeded, job.failed)
        if job.status == JobStatus.FAILED:
            job.error = failure_summary(session, job)
        job.finished_at = utcnow()
        job.started_at = job.started_at or job.finished_at
        announce_final(session, job)
        metrics.job_finished(session, job)
        outbox.add_finished(session, job.id)
