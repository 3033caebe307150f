"""Which workers are alive: each one writes its heartbeat; readiness and metrics read them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from shared.db.models import WorkerHeartbeat, utcnow

ROLES = ("classify", "webhooks")


@dataclass(frozen=True)
class Serving:
    """The model a classify worker serves, as its heartbeat says."""

    version: str
    precision: str
    accuracy: float | None  # on the model's test split (its metrics.json), where known


def beat(
    session: Session,
    name: str,
    role: str,
    host: str,
    started_at: datetime,
    serving: Serving | None = None,
) -> None:
    """Say `name` is alive now (insert or update its row), and what it serves."""
    row = session.get(WorkerHeartbeat, name)
    if row is None:
        row = WorkerHeartbeat(name=name, role=role, host=host, started_at=started_at)
        session.add(row)
    row.seen_at = utcnow()
    if serving is not None:
        row.model_version = serving.version
        row.model_precision = serving.precision
        row.model_accuracy = serving.accuracy
    session.flush()


def forget(session: Session, name: str) -> None:
    """A worker that stops cleanly removes its row: it is gone at once, not after a while."""
    session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.name == name))


def alive_counts(session: Session, stale_after_seconds: float) -> dict[str, int]:
    """Workers of each role seen within `stale_after_seconds`."""
    since = utcnow() - timedelta(seconds=stale_after_seconds)
    counts = dict(
        session.execute(
            select(WorkerHeartbeat.role, func.count())
            .where(WorkerHeartbeat.seen_at >= since)
            .group_by(WorkerHeartbeat.role)
        ).all()
    )
    return {role: int(counts.get(role, 0)) for role in ROLES}


def alive_on_host(session: Session, role: str, host: str, stale_after_seconds: float) -> bool:
    since = utcnow() - timedelta(seconds=stale_after_seconds)
    found = session.scalar(
        select(func.count()).where(
            WorkerHeartbeat.role == role,
            WorkerHeartbeat.host == host,
            WorkerHeartbeat.seen_at >= since,
        )
    )
    return bool(found)


def stale(session: Session, name: str, stale_after_seconds: float) -> bool:
    """`name` beat once but not within `stale_after_seconds`: alive, perhaps, but stalled.

    A worker that has not beaten yet (still loading its model) is not stale.
    """
    seen = session.scalar(select(WorkerHeartbeat.seen_at).where(WorkerHeartbeat.name == name))
    return seen is not None and seen < utcnow() - timedelta(seconds=stale_after_seconds)


def prune(session: Session, older_than_seconds: float) -> int:
    """Rows of workers long dead (killed, so they never said goodbye)."""
    since = utcnow() - timedelta(seconds=older_than_seconds)
    result = session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.seen_at < since))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
