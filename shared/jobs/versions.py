"""Model versions: which ones live workers serve, and which one a new job is pinned to.

A job is pinned when it is admitted, to the version the request names (refused
when no live worker serves it) or to the one new jobs get: DEFAULT_MODEL_VERSION
where set, else the newest version live workers serve (the one whose oldest
live worker started last, so the first workers of a rollout move new jobs to it
at once). Workers claim only items of jobs pinned to their version, so every
item of a job carries the same `model_version`; a job admitted while no worker
is alive is pinned by the first worker that claims it, and so is one whose
version lost its last worker before the job started (`unpin_unserved`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update

from shared.db.models import Job, JobStatus, WorkerHeartbeat, utcnow
from shared.errors import InvalidInput
from shared.settings import Settings
from shared.unit_of_work import UnitOfWork


@dataclass(frozen=True)
class LiveVersion:
    version: str
    precision: str | None
    accuracy: float | None  # on the model's test split, from its metrics.json
    workers: int
    oldest_worker_started_at: datetime


def live_versions(unit: UnitOfWork, stale_after_seconds: float) -> list[LiveVersion]:
    """Every version a classify worker seen within `stale_after_seconds` serves, newest first."""
    since = utcnow() - timedelta(seconds=stale_after_seconds)
    rows = unit.execute(
        select(
            WorkerHeartbeat.model_version,
            func.max(WorkerHeartbeat.model_precision),
            func.max(WorkerHeartbeat.model_accuracy),
            func.count(),
            func.min(WorkerHeartbeat.started_at),
        )
        .where(
            WorkerHeartbeat.role == "classify",
            WorkerHeartbeat.seen_at >= since,
            WorkerHeartbeat.model_version.is_not(None),
        )
        .group_by(WorkerHeartbeat.model_version)
    ).all()
    versions = [
        LiveVersion(str(version), precision, accuracy, int(workers), started)
        for version, precision, accuracy, workers, started in rows
    ]
    return sorted(versions, key=lambda v: (v.oldest_worker_started_at, v.version), reverse=True)


def version_for_new_jobs(versions: list[LiveVersion], settings: Settings) -> str | None:
    """DEFAULT_MODEL_VERSION if a live worker serves it, else the newest live version."""
    live = {v.version for v in versions}
    if settings.default_model_version and settings.default_model_version in live:
        return settings.default_model_version
    return versions[0].version if versions else None


def pin_version(unit: UnitOfWork, requested: str | None, settings: Settings) -> str | None:
    """The version a new job is pinned to; None (pinned at its first claim) when no
    worker is alive. A requested version no live worker serves is refused."""
    versions = live_versions(unit, settings.worker_stale_seconds)
    if requested is None:
        return version_for_new_jobs(versions, settings)
    if requested not in {v.version for v in versions}:
        served = ", ".join(v.version for v in versions) or "none"
        raise InvalidInput(
            f"no live worker serves model {requested!r} (live versions: {served}); see GET /models"
        )
    return requested


def unpin_unserved(unit: UnitOfWork, stale_after_seconds: float) -> list[str]:
    """Jobs pinned to a version no live worker serves, and not started: pinned again by
    the first worker that claims them; returns them (they need a message).

    Such a job was admitted just before its version's last worker stopped (a
    restart with a new model, say). Nothing of it has run, so nothing can mix. A
    started job keeps its version and waits for a worker of it; with no live worker
    at all, nothing changes.
    """
    live = [v.version for v in live_versions(unit, stale_after_seconds)]
    if not live:
        return []
    return list(
        unit.scalars(
            update(Job)
            .where(
                Job.status == JobStatus.QUEUED,
                Job.model_version.is_not(None),
                Job.model_version.not_in(live),
            )
            .values(model_version=None)
            .returning(Job.id)
        )
    )
