"""Retention and sweeping: nothing outlives RETENTION_SECONDS, and no stored file outlives its job.

Rows go first, then files: a crash in between leaves files without a job, which
the next pass sweeps; the reverse order could leave a job whose files are gone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared.db.models import Batch, Item, Job, utcnow
from shared.db.session import begin_write
from shared.services import unit_of_work
from shared.services.idempotency import forget_expired
from shared.services.intake import storage_prefix
from shared.settings import Settings
from shared.storage import Storage

log = logging.getLogger(__name__)

JOBS_PER_PASS = 500


@dataclass(frozen=True)
class SweepReport:
    jobs: int
    orphans: int
    idempotency_keys: int
    batches: int


def delete_expired_jobs(
    session: Session, storage: Storage, retention_seconds: float, now: datetime
) -> int:
    cutoff = now - timedelta(seconds=retention_seconds)
    deleted = 0
    while True:
        begin_write(session)
        job_ids = list(
            session.scalars(
                select(Job.id)
                .where(Job.finished_at.is_not(None), Job.finished_at < cutoff)
                .limit(JOBS_PER_PASS)
            )
        )
        if not job_ids:
            unit_of_work.rollback(session)
            return deleted
        session.execute(delete(Item).where(Item.job_id.in_(job_ids)))
        # Webhook events and their attempts go with the job (ON DELETE CASCADE).
        session.execute(delete(Job).where(Job.id.in_(job_ids)))
        unit_of_work.commit(session)
        for job_id in job_ids:
            storage.delete_prefix(storage_prefix(job_id))
        deleted += len(job_ids)


def delete_orphaned_files(
    session: Session, storage: Storage, grace_seconds: float, now: datetime
) -> int:
    """Files whose job was never committed (an API killed mid-upload) or is gone."""
    cutoff = now - timedelta(seconds=grace_seconds)
    old = [prefix for prefix, modified in storage.prefixes() if modified < cutoff]
    swept = 0
    for start in range(0, len(old), 500):
        chunk = old[start : start + 500]
        known = set(session.scalars(select(Job.id).where(Job.id.in_(chunk))))
        unit_of_work.rollback(session)
        for prefix in chunk:
            if prefix not in known:
                storage.delete_prefix(prefix)
                swept += 1
    return swept


def sweep(
    session: Session, storage: Storage, settings: Settings, now: datetime | None = None
) -> SweepReport:
    now = now or utcnow()
    jobs = delete_expired_jobs(session, storage, settings.retention_seconds, now)
    orphans = delete_orphaned_files(session, storage, settings.orphan_grace_seconds, now)
    begin_write(session)
    keys = forget_expired(session, settings.idempotency_ttl_seconds, now)
    cutoff = now - timedelta(seconds=settings.retention_seconds)
    batches = session.execute(delete(Batch).where(Batch.created_at < cutoff)).rowcount  # type: ignore[attr-defined]
    unit_of_work.commit(session)
    report = SweepReport(jobs, orphans, keys, int(batches or 0))
    if any(vars(report).values()):
        log.info(
            "swept %d expired job(s), %d orphaned upload folder(s), %d idempotency key(s), "
            "%d batch record(s)",
            jobs,
            orphans,
            keys,
            report.batches,
        )
    return report
