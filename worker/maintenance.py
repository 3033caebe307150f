"""The classification worker's background passes: reconcile lost work, sweep what expired.

Each step is its own unit of work, committed here: the reconciler's job messages
go out after its commit, and the sweep deletes files only after the rows that
owned them are gone.
"""

from __future__ import annotations

import logging
from datetime import datetime

from shared import heartbeats, outbox
from shared.db.models import utcnow
from shared.jobs.recovery import requeue_stale
from shared.jobs.retention import (
    SweepReport,
    delete_expired_jobs,
    delete_orphaned_files,
    forget_old_records,
)
from shared.jobs.versions import unpin_unserved
from shared.settings import Settings
from shared.storage import Storage
from shared.unit_of_work import UnitOfWorkFactory

log = logging.getLogger(__name__)


def reconcile(settings: Settings, units: UnitOfWorkFactory) -> list[str]:
    """Take back what a dead worker left running, free unstarted jobs whose model version
    lost its workers, and enqueue every job left waiting.

    Only jobs with no message waiting get one (`JobQueue`'s marks), so a backlog
    never grows duplicates. Returns the jobs whose message was sent.
    """
    with units.scope() as unit:
        heartbeats.prune(unit, max(20 * settings.worker_stale_seconds, 3600))
        for job_id in requeue_stale(
            unit, settings.requeue_after_seconds, settings.max_item_attempts
        ):
            outbox.add_job(unit, job_id)
        for job_id in unpin_unserved(unit, settings.worker_stale_seconds):
            outbox.add_job(unit, job_id)
    sent = unit.sent_jobs
    if sent:
        log.warning("reconciler enqueued %d job(s) again: %s", len(sent), ", ".join(sent))
    return sent


def sweep(
    settings: Settings, units: UnitOfWorkFactory, storage: Storage, now: datetime | None = None
) -> SweepReport:
    """Delete what retention says is over, and stored files that lost their job."""
    now = now or utcnow()
    jobs = 0
    while True:  # a pass at a time, so no transaction holds the write lock for long
        with units.scope() as unit:
            deleted = delete_expired_jobs(unit, storage, settings.retention_seconds, now)
        jobs += deleted
        if deleted == 0:
            break
    with units.scope(write=False) as unit:
        orphans = delete_orphaned_files(unit, storage, settings.orphan_grace_seconds, now)
    with units.scope() as unit:
        forgotten = forget_old_records(unit, settings, now)
    report = SweepReport(jobs, orphans, forgotten.idempotency_keys, forgotten.batches)
    if any(vars(report).values()):
        log.info(
            "swept %d expired job(s), %d orphaned upload folder(s), %d idempotency key(s), "
            "%d batch record(s)",
            report.jobs,
            report.orphans,
            report.idempotency_keys,
            report.batches,
        )
    return report
