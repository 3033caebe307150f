"""Giving back what a worker holds: when its task ends early, when its lease lapsed,
when a job's message was lost.

Items that were in a pass when their worker died are charged (they were
charged as they entered it) and run alone next; items merely claimed go back
uncharged.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from sqlalchemy import ColumnElement, and_, or_, select, update

from shared import metrics
from shared.access.usage import FAILED, count_for_jobs
from shared.db.models import Item, ItemStatus, Job, JobStatus, utcnow
from shared.jobs.progress import refresh_job
from shared.unit_of_work import UnitOfWork


def release(session: UnitOfWork, ids: list[str], worker: str, max_attempts: int) -> list[str]:
    """Give back what `worker` still holds of `ids` (a task that ends early); their jobs.

    Items not yet in a pass go back as they were; items in one were charged and
    run alone next (or fail, past `max_attempts`), as if their worker had died.
    """
    if not ids:
        return []
    held = (Item.id.in_(ids), Item.status == ItemStatus.RUNNING, Item.leased_by == worker)
    return take_back(session, held, max_attempts)


def take_back(
    session: UnitOfWork, held: tuple[ColumnElement[bool], ...], max_attempts: int
) -> list[str]:
    """Put running items matching `held` back in the queue; the jobs they belong to.

    Only items that were in a pass are suspects: they were charged an attempt and
    run alone next, and fail alone once they used up `max_attempts`. Items that
    were merely claimed go back uncharged.
    """
    abandoned = session.execute(
        update(Item)
        .where(*held, Item.in_pass.is_(True), Item.attempts >= max_attempts)
        .values(
            status=ItemStatus.FAILED,
            finished_at=utcnow(),
            leased_by=None,
            lease_until=None,
            error=(
                f"abandoned after {max_attempts} attempts (MAX_ITEM_ATTEMPTS): each time, "
                "the worker running it died or stalled; the last times it ran alone"
            ),
        )
        .returning(Item.job_id)
    ).scalars()
    abandoned_jobs = Counter(abandoned)
    metrics.items_finished(session, ItemStatus.FAILED, sum(abandoned_jobs.values()))
    count_for_jobs(session, Counter({(job, FAILED): n for job, n in abandoned_jobs.items()}))
    suspects = session.execute(
        update(Item)
        .where(*held, Item.in_pass.is_(True))
        .values(
            status=ItemStatus.QUEUED, solo=True, in_pass=False, leased_by=None, lease_until=None
        )
        .returning(Item.job_id)
    ).scalars()
    jobs = set(suspects)
    merely_claimed = session.execute(
        update(Item)
        .where(*held)
        .values(status=ItemStatus.QUEUED, leased_by=None, lease_until=None)
        .returning(Item.job_id)
    ).scalars()
    jobs.update(merely_claimed)
    for job_id in sorted(set(abandoned_jobs) - jobs):
        refresh_job(session, job_id)
    return sorted(jobs)


def requeue_stale(session: UnitOfWork, older_than_seconds: float, max_attempts: int) -> list[str]:
    """Recover from lost workers and lost messages; returns the jobs to enqueue again.

    Items whose lease ran out (their worker died or stalled, so it stopped
    extending it) go back to the queue (`take_back`). Jobs with items queued
    longer than `older_than_seconds` (their message was lost) are enqueued
    again; jobs whose items all ended are settled.
    """
    now = utcnow()
    cutoff = now - timedelta(seconds=older_than_seconds)
    lapsed = (
        Item.status == ItemStatus.RUNNING,
        or_(
            Item.lease_until < now,
            and_(Item.lease_until.is_(None), Item.started_at < cutoff),  # claimed before leases
        ),
    )
    jobs = set(take_back(session, lapsed, max_attempts))
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
    for job_id in sorted(set(unsettled) - jobs):
        refresh_job(session, job_id)
    return sorted(jobs)
