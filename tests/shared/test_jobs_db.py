"""Job state in real SQLite and Postgres: migrations, claiming, idempotent results, recovery."""

from __future__ import annotations

import io
import json
import os
import time
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text, update
from sqlalchemy.orm import Session

from shared import metrics
from shared.db.migrate import downgrade, upgrade
from shared.db.models import (
    Base,
    IdempotencyKey,
    Item,
    Job,
    JobStatus,
    MetricCounter,
    WebhookEvent,
    new_id,
    utcnow,
)
from shared.db.session import engine_for
from shared.errors import Conflict
from shared.services.intake import StagedItem
from shared.services.jobs import cancel_job, create_job
from shared.services.keys import create_key
from shared.services.processing import (
    Claimed,
    ItemResult,
    claim_items,
    record_results,
    requeue_stale,
    reuse_known_results,
)
from shared.services.unit_of_work import session_scope
from shared.settings import Settings
from shared.storage import LocalStorage
from worker.maintenance import sweep

TABLES = {
    "jobs",
    "items",
    "batches",
    "webhook_events",
    "webhook_attempts",
    "api_keys",
    "idempotency_keys",
    "metric_counters",
    "worker_heartbeats",
    "alembic_version",
}


# The settings every helper and test here works on: built, not read from the environment.
SETTINGS = Settings()


class RecordingSender:
    """Stands in for the queue: what each unit of work sent after its commit."""

    def __init__(self) -> None:
        self.jobs: list[str] = []
        self.events: list[str] = []

    def enqueue(self, job_id: str) -> bool:
        self.jobs.append(job_id)
        return True

    def enqueue_webhook(self, event_id: str) -> None:
        self.events.append(event_id)


SENT = RecordingSender()


def scope(write: bool = True) -> AbstractContextManager[Session]:
    return session_scope(SETTINGS, write, sender=SENT)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    global SETTINGS
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
        upgrade(url)
    else:
        url = request.getfixturevalue("postgres_url")
        upgrade(url)
        with engine_for(url).begin() as connection:
            connection.execute(
                text(
                    "TRUNCATE jobs, items, batches, api_keys, idempotency_keys, metric_counters "
                    "CASCADE"
                )
            )
    SETTINGS = Settings(database_url=url)
    return url


def test_migration_matches_the_models_and_round_trips(database: str) -> None:
    engine = engine_for(database)
    assert set(inspect(engine).get_table_names()) >= TABLES
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
    downgrade(database)
    engine.dispose()
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(database)
    assert set(inspect(engine).get_table_names()) >= TABLES


def _job(
    n: int,
    failed: int = 0,
    webhook_events: list[str] | None = None,
    owner_id: str | None = None,
) -> str:
    job_id = new_id()
    staged = [
        StagedItem(new_id(), i, f"img{i}.jpg", 10, "0" * 64, f"k/{i}", None) for i in range(n)
    ] + [
        StagedItem(new_id(), n + i, f"bad{i}.txt", 3, "1" * 64, None, "not an image")
        for i in range(failed)
    ]
    with scope() as session:
        create_job(
            session,
            job_id,
            staged,
            webhook_url="https://hooks.example/in" if webhook_events is not None else None,
            webhook_events=webhook_events,
            owner_id=owner_id,
        )
    return job_id


def _results(
    claimed: list[Claimed], label: str = "sea", fail: set[str] | None = None, version: str = "v1"
) -> list[ItemResult]:
    fail = fail or set()
    return [
        ItemResult(c.id, c.job_id, None, None, None, "broken")
        if c.filename in fail
        else ItemResult(c.id, c.job_id, label, 0.9, {label: 0.9}, None, model_version=version)
        for c in claimed
    ]


def _job_row(job_id: str) -> Job:
    with scope(write=False) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_claims_own_job_first_then_lowest_positions_of_others(database: str) -> None:
    big, single = _job(10), _job(1)
    with scope() as session:
        first = claim_items(session, big, 4, "v1")
    assert [(c.job_id, c.filename) for c in first] == [(big, f"img{i}.jpg") for i in range(4)]
    with scope() as session:
        other = claim_items(session, new_id(), 3, "v1")
    assert [(c.job_id, c.filename) for c in other] == [
        (single, "img0.jpg"),
        (big, "img4.jpg"),
        (big, "img5.jpg"),
    ]
    assert _job_row(big).status == JobStatus.RUNNING
    assert _job_row(big).model_version == "v1"


def test_results_are_written_once_and_the_job_ends_with_the_right_status(database: str) -> None:
    job_id = _job(3, failed=1)
    assert _job_row(job_id).failed == 1  # the intake's failure counts from the start
    with scope() as session:
        claimed = claim_items(session, job_id, 10, "v1")
    with scope() as session:
        record_results(session, _results(claimed, fail={"img2.jpg"}), worker="w", inference_ms=5)
    with scope() as session:  # a redelivered task writes the same batch again
        record_results(session, _results(claimed, label="forest"), worker="w", inference_ms=5)
    job = _job_row(job_id)
    assert (job.status, job.succeeded, job.failed, job.total) == (
        JobStatus.PARTIALLY_SUCCEEDED,
        2,
        2,
        4,
    )
    assert job.finished_at is not None
    with scope(write=False) as session:
        labels = session.scalars(select(Item.label).where(Item.job_id == job_id)).all()
        times = session.scalars(
            select(Item.inference_ms).where(Item.job_id == job_id, Item.batch_id.is_not(None))
        ).all()
    assert sorted(str(label) for label in labels) == ["None", "None", "sea", "sea"]
    assert list(times) == pytest.approx([5 / 3] * 3, abs=1e-3)  # each item's share of 5 ms


def test_all_failed_is_failed_and_all_succeeded_is_succeeded(database: str) -> None:
    bad, good = _job(1), _job(2)
    for job_id, size, fail in ((bad, 1, {"img0.jpg"}), (good, 2, set())):
        with scope() as session:
            claimed = claim_items(session, job_id, size, "v1")
        with scope() as session:
            record_results(session, _results(claimed, fail=fail), worker="w", inference_ms=1)
    assert _job_row(bad).status == JobStatus.FAILED
    assert _job_row(bad).error == "no image could be classified: broken"
    assert _job_row(good).status == JobStatus.SUCCEEDED
    assert _job_row(good).error is None


def test_cancel_ends_queued_and_running_items_and_keeps_finished_ones(database: str) -> None:
    job_id = _job(6)
    with scope() as session:
        done = claim_items(session, job_id, 1, "v1")
    with scope() as session:
        record_results(session, _results(done), worker="w", inference_ms=1)
    with scope() as session:
        running = claim_items(session, job_id, 2, "v1")
    with scope() as session:
        cancel_job(session, job_id, None)
    with scope() as session:  # the batch in flight lands after the cancel: dropped
        record_results(session, _results(running), worker="w", inference_ms=1)
    with scope() as session:
        assert requeue_stale(session, 0, 3) == []  # nothing of a cancelled job comes back
    job = _job_row(job_id)
    assert (job.status, job.succeeded, job.skipped) == (JobStatus.CANCELLED, 1, 5)
    with scope() as session, pytest.raises(Conflict, match="already finished"):
        cancel_job(session, job_id, None)


def test_reconciler_requeues_items_of_a_dead_worker(database: str) -> None:
    job_id = _job(2)
    with scope() as session:
        claimed = claim_items(session, job_id, 2, "v1")
    with scope() as session:
        assert requeue_stale(session, 60, 3) == []  # still within the deadline
    with scope() as session:
        session.execute(
            update(Item)
            .where(Item.job_id == job_id)
            .values(started_at=utcnow() - timedelta(hours=1))
        )
    with scope() as session:
        assert requeue_stale(session, 60, 3) == [job_id]
    with scope() as session:
        again = claim_items(session, job_id, 5, "v1")
    assert {c.id for c in again} == {c.id for c in claimed}
    with scope(write=False) as session:
        attempts = session.scalars(select(Item.attempts).where(Item.job_id == job_id)).all()
    assert attempts == [2, 2]


def test_an_item_that_outlives_its_workers_max_attempts_times_fails_alone(database: str) -> None:
    poison = _job(1)
    with scope() as session:
        for attempt in range(3):
            assert claim_items(session, poison, 1, "v1"), attempt
            session.execute(
                update(Item).values(started_at=utcnow() - timedelta(hours=1))
            )  # its worker died holding it
            jobs = requeue_stale(session, 60, 3)
            assert jobs == ([poison] if attempt < 2 else [])
    with scope(write=False) as session:
        item = session.scalars(select(Item).where(Item.job_id == poison)).one()
    assert item.status == "failed"
    assert item.error is not None
    assert "abandoned after 3 attempts (MAX_ITEM_ATTEMPTS)" in item.error
    job = _job_row(poison)
    assert (job.status, job.failed) == (JobStatus.FAILED, 1)


def test_webhook_events_are_written_with_the_state_they_announce(database: str) -> None:
    job_id = _job(2, webhook_events=["job.started"])
    quiet = _job(1)  # no webhook_url: no events
    with scope() as session:
        claimed = claim_items(session, job_id, 1, "v1")
    with scope() as session:
        record_results(session, _results(claimed), worker="w", inference_ms=1)
    with scope() as session:
        rest = claim_items(session, job_id, 5, "v1")
    with scope() as session:
        record_results(session, _results(rest), worker="w", inference_ms=1)
    with scope(write=False) as session:
        events = session.scalars(select(WebhookEvent).order_by(WebhookEvent.created_at)).all()
        assert {e.job_id for e in events} == {job_id}
        assert [e.type for e in events] == ["job.started", "job.succeeded"]
        final = json.loads(events[-1].body)
        assert final["data"]["status"] == "succeeded"
        assert final["data"]["summary"] == {"sea": 2}
        assert all(e.id.startswith("msg_") and e.status == "pending" for e in events)
    assert [e.id for e in events] == SENT.events[-2:]  # each sent after the commit that wrote it
    assert _job_row(quiet).status == JobStatus.SUCCEEDED  # claimed alongside, finished too


def test_identical_bytes_reuse_the_stored_result_of_the_same_model_version(database: str) -> None:
    first = _job(1)
    with scope() as session:
        claimed = claim_items(session, first, 1, "v1")
    with scope() as session:
        record_results(session, _results(claimed, label="glacier"), worker="w", inference_ms=1)

    again, other_model = _job(2), _job(1)  # every staged item has sha256 "000…"
    with scope() as session:
        claimed = claim_items(session, again, 2, "v1")
        reused, to_run = reuse_known_results(session, claimed, "v1", worker="w")
    assert (len(reused), to_run) == (2, [])
    job = _job_row(again)
    assert (job.status, job.succeeded) == (JobStatus.SUCCEEDED, 2)
    with scope(write=False) as session:
        items = session.scalars(select(Item).where(Item.job_id == again)).all()
        assert {(i.label, i.reused_from is not None) for i in items} == {("glacier", True)}
        assert {i.model_version for i in items} == {"v1"}  # each item names its model
    with scope() as session:  # the same weights at another precision run the model again
        claimed = claim_items(session, other_model, 1, "v1-fp32")
        reused, to_run = reuse_known_results(session, claimed, "v1-fp32", worker="w")
    assert (reused, len(to_run)) == ([], 1)


def test_known_results_are_reused_only_within_their_owner(database: str) -> None:
    with scope() as session:
        owners = [create_key(session, name)[0].id for name in ("a", "b")]
    first = _job(1, owner_id=owners[0])
    with scope() as session:
        claimed = claim_items(session, first, 1, "v1")
        record_results(session, _results(claimed, label="glacier"), worker="w", inference_ms=1)

    same_owner, other_owner, anonymous = (
        _job(1, owner_id=owners[0]),
        _job(1, owner_id=owners[1]),
        _job(1),
    )  # the same bytes (sha256 "000…") from three callers
    with scope() as session:
        claimed = claim_items(session, same_owner, 3, "v1")
        reused, to_run = reuse_known_results(session, claimed, "v1", worker="w")
    assert [c.job_id for c in reused] == [same_owner]
    assert {c.job_id for c in to_run} == {other_owner, anonymous}


def _finished_job(session: Session, storage: LocalStorage, finished_ago: timedelta) -> str:
    job_id = new_id()
    staged = [StagedItem(new_id(), 0, "a.jpg", 3, None, f"{job_id}/x", None)]
    storage.put(f"{job_id}/x", io.BytesIO(b"abc"))
    job = create_job(session, job_id, staged, webhook_url="https://example.com/hook")
    job.status = JobStatus.SUCCEEDED
    job.finished_at = utcnow() - finished_ago
    session.add(
        WebhookEvent(
            id=f"msg_{job_id}",
            job_id=job_id,
            type="job.succeeded",
            url="https://example.com",
            body="{}",
            status="delivered",
            attempts=1,
            created_at=utcnow(),
        )
    )
    return job_id


def test_retention_deletes_old_jobs_with_everything_they_own(database: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "uploads")
    settings = SETTINGS.model_copy(update={"retention_seconds": 7 * 86_400})
    with scope() as session:
        expired = _finished_job(session, storage, timedelta(days=8))
        recent = _finished_job(session, storage, timedelta(hours=1))
        running = create_job(
            session, new_id(), [StagedItem(new_id(), 0, "b.jpg", 1, None, None, None)]
        )
        running.created_at = utcnow() - timedelta(days=30)  # old, but not finished: kept
        expired_job = session.get(Job, expired)
        assert expired_job is not None
        metrics.job_finished(session, expired_job)
    report = sweep(settings, storage)
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
    settings = SETTINGS.model_copy(update={"orphan_grace_seconds": 3600})
    two_hours_ago = time.time() - 7200
    for name in ("orphan-old", "orphan-young"):
        storage.put(f"{name}/x", io.BytesIO(b"abc"))
    os.utime(tmp_path / "uploads" / "orphan-old", (two_hours_ago, two_hours_ago))
    with scope() as session:
        kept = _finished_job(session, storage, timedelta(minutes=1))
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
    report = sweep(settings, storage)
    assert (report.orphans, report.idempotency_keys) == (1, 1)
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == sorted(
        [kept, "orphan-young"]
    )
    with scope(write=False) as session:
        assert [k.key for k in session.scalars(select(IdempotencyKey))] == ["fresh"]
