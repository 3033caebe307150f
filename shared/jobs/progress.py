"""Job counts and final status: recounted from the items, or added to as results land; one
rule for when a job ends."""

from __future__ import annotations

from sqlalchemy import ColumnElement, func, or_, select

from shared import metrics, outbox
from shared.db.models import Item, ItemStatus, Job, JobStatus, utcnow
from shared.jobs.events import announce_final
from shared.jobs.probes import job_has_item
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
    jobs = _lock_jobs(session, job_ids)
    counts: dict[str, dict[str, int]] = {job_id: {} for job_id in jobs}
    for job_id, status, number in session.execute(
        select(Item.job_id, Item.status, func.count())
        .where(Item.job_id.in_(list(jobs)))
        .group_by(Item.job_id, Item.status)
    ):
        counts[job_id][status] = int(number)
    for job_id, job in jobs.items():
        job.succeeded = counts[job_id].get(ItemStatus.SUCCEEDED, 0)
        job.failed = counts[job_id].get(ItemStatus.FAILED, 0)
        job.skipped = counts[job_id].get(ItemStatus.SKIPPED, 0)
        unfinished = counts[job_id].get(ItemStatus.QUEUED, 0) + counts[job_id].get(
            ItemStatus.RUNNING, 0
        )
        _settle(session, job, unfinished > 0)
    return jobs


def add_results(session: UnitOfWork, added: dict[str, tuple[int, int]]) -> dict[str, Job]:
    """Lock the jobs' rows, add (succeeded, failed) results to their counts, settle them.

    For results just written over running items (`write_item_results` writes each
    item once): a batch of a big job costs one look for an unfinished item, not a
    recount of the job's every item. It mixes with recounts (`refresh_jobs`) under
    the same row lock: a recount sees only committed results, and results added
    after it arrive through this. Whether anything is left to run is read after
    the lock, in a statement of its own: under READ COMMITTED its snapshot then
    holds the results of whoever held the lock before.
    """
    jobs = _lock_jobs(session, list(added))
    unfinished = set(
        session.scalars(select(Job.id).where(Job.id.in_(list(jobs)), _has_unfinished_items()))
    )
    for job_id, job in jobs.items():
        succeeded, failed = added[job_id]
        job.succeeded += succeeded
        job.failed += failed
        _settle(session, job, job_id in unfinished)
    return jobs


def _lock_jobs(session: UnitOfWork, job_ids: list[str]) -> dict[str, Job]:
    """The jobs that still exist, their rows locked in id order (no deadlocks), read afresh."""
    if not job_ids:
        return {}
    locked = (
        select(Job)
        .where(Job.id.in_(sorted(set(job_ids))))
        .order_by(Job.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return {job.id: job for job in session.scalars(locked)}


def _has_unfinished_items() -> ColumnElement[bool]:
    """Whether the job has an item queued or running: a probe for each status (with both
    in one test, a planner may read every item of the job instead)."""
    return or_(*(job_has_item(Item.status == status) for status in _UNFINISHED_ITEMS))


_UNFINISHED_ITEMS = (ItemStatus.QUEUED, ItemStatus.RUNNING)


def _settle(session: UnitOfWork, job: Job, unfinished: bool) -> None:
    if unfinished or job.status not in {JobStatus.QUEUED, JobStatus.RUNNING}:
        return
    job.status = final_status(job.succeeded, job.failed)
    if job.status == JobStatus.FAILED:
        job.error = failure_summary(session, job)
    job.finished_at = utcnow()
    job.started_at = job.started_at or job.finished_at
    announce_final(session, job)
    metrics.job_finished(session, job)
    outbox.add_finished(session, job.id)
