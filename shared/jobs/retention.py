"""Retention and sweeping: nothing outlives RETENTION_SECONDS, and no stored file outlives its job.

Each function is one unit of work's content; the edge (the worker's maintenance
pass, `intel-classifier sweep`) opens and commits one session per step. Rows go
first, files after the commit: a crash in between leaves files without a job,
which the next pass sweeps; the reverse order could leave a job whose files are gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from shared import unit_of_work
from shared.db.models import Batch, Item, Job
from shared.jobs.idempotency import forget_expired
from shared.jobs.intake import storage_prefix
from shared.settings import Settings
from shared.storage import Storage
from shared.unit_of_work import UnitOfWork

JOBS_PER_PASS = 500


@dataclass(frozen=True)
class SweepReport:
    jobs: int
    orphans: int
    idempotency_keys: int
    batches: int


def delete_expired_jobs(
    session: UnitOfWork, storage: Storage, retention_seconds: float, now: datetime
) -> int:
    """Up to JOBS_PER_PASS jobs finished before the retention cutoff, with their items and files."""
    cutoff = now - timedelta(seconds=retention_seconds)
    session.begin_write()
    job_ids = list(
        session.scalars(
            select(Job.id)
            .where(Job.finished_at.is_not(None), Job.finished_at < cutoff)
            .limit(JOBS_PER_PASS)
        )
    )
    if not job_ids:
        return 0
    session.execute(delete(Item).where(Item.job_id.in_(job_ids)))
    # Webhook events and their attempts go with the job (ON DELETE CASCADE).
    session.execute(delete(Job).where(Job.id.in_(job_ids)))

    def delete_files() -> None:
        for job_id in job_ids:
            storage.delete_prefix(storage_prefix(job_id))

    unit_of_work.after_commit(session, delete_files)
    return len(job_ids)


def delete_orphaned_files(
    session: UnitOfWork, storage: Storage, grace_seconds: float, now: datetime
) -> int:
    """Files whose job was never committed (an API killed mid-upload) or is gone."""
    cutoff = now - timedelta(seconds=grace_seconds)
    old = [prefix for prefix, modified in storage.prefixes() if modified < cutoff]
    swept = 0
    for start in range(0, len(old), 500):
        chunk = old[start : start + 500]
        known = set(session.scalars(select(Job.id).where(Job.id.in_(chunk))))
        for prefix in chunk:
            if prefix not in known:
                storage.delete_prefix(prefix)
                swept += 1
    return swept


@dataclass(frozen=True)
class Forgotten:
    idempotency_keys: int
    batches: int


def forget_old_records(session: UnitOfWork, settings: Settings, now: datetime) -> Forgotten:
    """Idempotency keys past IDEMPOTENCY_TTL_SECONDS and batch records past retention."""
    session.begin_write()
    keys = forget_expired(session, settings.idempotency_ttl_seconds, now)
    cutoff = now - timedelta(seconds=settings.retention_seconds)
    batches = session.execute(delete(Batch).where(Batch.created_at < cutoff)).rowcount  # type: ignore[attr-defined]
    return Forgotten(keys, int(batches or 0))
