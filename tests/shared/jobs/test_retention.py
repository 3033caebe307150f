"""Retention and the sweep."""

from __future__ import annotations

import io
import os
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from shared import metrics
from shared.db.models import (
    IdempotencyKey,
    Item,
    Job,
    MetricCounter,
    WebhookEvent,
    new_id,
    utcnow,
)
from shared.jobs.intake import StagedItem
from shared.jobs.records import create_job
from shared.storage import LocalStorage
from shared.unit_of_work import UnitOfWorkFactory
from tests.shared import database as db
from tests.shared.database import (
    finished_job,
    scope,
)
from worker.maintenance import sweep


def test_retention_deletes_old_jobs_with_everything_they_own(database: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "uploads")
    settings = db.SETTINGS.model_copy(update={"retention_seconds": 7 * 86_400})
    with scope() as session:
        expired = finished_job(session, storage, timedelta(days=8))
        recent = finished_job(session, storage, timedelta(hours=1))
        running = create_job(
            session, new_id(), [StagedItem(new_id(), 0, "b.jpg", 1, None, None, None)]
        )
        running.created_at = utcnow() - timedelta(days=30)  # old, but not finished: kept
        expired_job = session.get(Job, expired)
        assert expired_job is not None
        metrics.job_finished(session, expired_job)
    report = sweep(settings, UnitOfWorkFactory(settings), storage)
    assert report.jobs == 1
    with scope(write=False) as session:
        assert {j.id for j in session.scalars(select(Job))} == {recent, running.id}
        assert session.scalars(select(Item).where(Item.job_id == expired)).all() == []
        assert (
            session.scalars(select(WebhookEvent).where(WebhookEvent.job_id == expired)).all() == []
        )
        counted = session.scalar(
            select(MetricCounter.value).where(MetricCounter.name == metrics.JOBS_FINISHED)
        )
    assert counted == 1  # counters outlive the jobs they counted
    assert not (tmp_path / "uploads" / expired).exists()
    assert (tmp_path / "uploads" / recent / "x").is_file()


def test_sweep_removes_orphaned_files_and_expired_idempotency_keys(
    database: str, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "uploads")
    settings = db.SETTINGS.model_copy(update={"orphan_grace_seconds": 3600})
    two_hours_ago = time.time() - 7200
    for name in ("orphan-old", "orphan-young"):
        storage.put(f"{name}/x", io.BytesIO(b"abc"))
    os.utime(tmp_path / "uploads" / "orphan-old", (two_hours_ago, two_hours_ago))
    with scope() as session:
        kept = finished_job(session, storage, timedelta(minutes=1))
        for key, age in (("fresh", timedelta(hours=23)), ("stale", timedelta(hours=25))):
            session.add(
                IdempotencyKey(
                    owner="",
                    key=key,
                    request_sha256="0" * 64,
                    job_id=kept,
                    created_at=utcnow() - age,
                )
            )
    os.utime(tmp_path / "uploads" / kept, (two_hours_ago, two_hours_ago))
    report = sweep(settings, UnitOfWorkFactory(settings), storage)
    assert (report.orphans, report.idempotency_keys) == (1, 1)
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == sorted(
        [kept, "orphan-young"]
    )
    with scope(write=False) as session:
        assert [k.key for k in session.scalars(select(IdempotencyKey))] == ["fresh"]
