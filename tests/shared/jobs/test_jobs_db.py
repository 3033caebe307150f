"""Job state in real SQLite and Postgres: migrations, claiming, idempotent results, recovery."""

from __future__ import annotations

import io
import json
import os
import time
from collections import Counter
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text, update

from shared import metrics
from shared.access.keys import create_key
from shared.db.migrate import downgrade, upgrade
from shared.db.models import (
    Base,
    IdempotencyKey,
    Item,
    Job,
    JobSource,
    JobStatus,
    MetricCounter,
    WebhookEvent,
    WebhookEventStatus,
    new_id,
    utcnow,
)
from shared.db.session import engine_for
from shared.errors import Conflict
from shared.jobs.intake import StagedItem
from shared.jobs.processing import (
    Claimed,
    ItemResult,
    begin_pass,
    claim_items,
    extend_leases,
    record_results,
    reuse_known_results,
)
from shared.jobs.records import cancel_job, create_job
from shared.jobs.recovery import release, requeue_stale
from shared.settings import Settings
from shared.storage import LocalStorage
from shared.unit_of_work import UnitOfWork, UnitOfWorkFactory
from shared.webhooks.delivery import Attempt, Outcome, claim_event, due_events, record_attempt
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
    "tenant_shares",
    "scheduler_clock",
    "alembic_version",
}


# The settings every helper and test here works on: built, not read from the environment.
SETTINGS = Settings()


class RecordingSender:
    """Stands in for the queue: what each unit of work sent after its commit."""

    def __init__(self) -> None:
        self.jobs: list[str] = []
        self.events: list[str] = []
        self.finished: list[str] = []

    def enqueue(self, job_id: str) -> bool:
        self.jobs.append(job_id)
        return True

    def enqueue_webhook(self, event_id: str) -> None:
        self.events.append(event_id)

    def announce_finished(self, job_ids: list[str]) -> None:
        self.finished += job_ids


SENT = RecordingSender()


def scope(write: bool = True) -> AbstractContextManager[UnitOfWork]:
    return UnitOfWorkFactory(SETTINGS, sender=SENT).scope(write)


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
            connection.execute(text("UPDATE scheduler_clock SET virtual_time = 0"))
            connection.execute(
                text(
                    "TRUNCATE jobs, items, batches, api_keys, idempotency_keys, metric_counters, "
                    "tenant_shares CASCADE"
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


def claim(session: UnitOfWork, limit: int, version: str = "v1", worker: str = "w") -> list[Claimed]:
    return claim_items(session, limit, version, worker=worker, lease_seconds=60)


def _job(
    n: int,
    failed: int = 0,
    webhook_events: list[str] | None = None,
    owner_id: str | None = None,
    source: JobSource = JobSource.JOBS,
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
            source=source,
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


def _keys(*weights: int) -> list[str]:
    with scope() as session:
        return [create_key(session, f"tenant{i}", weight)[0].id for i, weight in enumerate(weights)]


def _owners(claimed: list[Claimed]) -> Counter[str | None]:
    with scope(write=False) as session:
        owner_of = {row.id: row.owner_id for row in session.execute(select(Job.id, Job.owner_id))}
    return Counter(owner_of[c.job_id] for c in claimed)


def test_a_tenant_share_does_not_grow_with_the_jobs_it_splits_work_into(database: str) -> None:
    one_zip, many_jobs = _keys(1, 1)
    zipped = _job(40, owner_id=one_zip)
    split = [_job(2, owner_id=many_jobs) for _ in range(20)]
    for _ in range(4):
        with scope() as session:
            batch = claim(session, 8)
        assert _owners(batch) == {one_zip: 4, many_jobs: 4}
    with scope() as session:
        batch = claim(session, 8)
    # Inside a tenant, its jobs go in the order they were made, each job's items in order.
    assert [c.job_id for c in batch if c.job_id != zipped] == [split[8]] * 2 + [split[9]] * 2
    assert [c.filename for c in batch if c.job_id == zipped] == [
        f"img{i}.jpg" for i in range(16, 20)
    ]
    assert _job_row(zipped).status == JobStatus.RUNNING
    assert _job_row(zipped).model_version == "v1"


def test_weights_set_the_shares_and_a_one_image_job_goes_into_the_next_batch(
    database: str,
) -> None:
    heavy, light, newcomer = _keys(3, 1, 1)
    _job(100, owner_id=heavy)
    _job(100, owner_id=light)
    with scope() as session:
        assert _owners(claim(session, 16)) == {heavy: 12, light: 4}
    single = _job(1, owner_id=newcomer)
    with scope() as session:
        batch = claim(session, 16)
    assert single in {c.job_id for c in batch}  # no wait behind the backlog
    # The newcomer starts from the virtual time, not from nothing: it gets its one
    # image, not every slot until it has caught up with the others.
    assert _owners(batch)[newcomer] == 1


def test_a_tenant_back_from_a_pause_gets_no_burst(database: str) -> None:
    steady, returning = _keys(1, 1)
    _job(200, owner_id=steady)
    with scope() as session:
        for _ in range(5):
            claim(session, 16)  # steady has the workers to itself for a while
    _job(50, owner_id=returning)
    with scope() as session:
        assert _owners(claim(session, 16)) == {steady: 8, returning: 8}


def test_the_interactive_lane_goes_first_and_suspects_run_alone(database: str) -> None:
    backlog = _job(20)
    predict = _job(1, source=JobSource.PREDICT)
    with scope() as session:
        assert [c.job_id for c in claim(session, 8)] == [predict]  # not held for a full batch
    with scope() as session:
        session.execute(
            update(Item).where(Item.job_id == backlog, Item.position == 5).values(solo=True)
        )
    with scope() as session:
        suspect = claim(session, 8)
    assert [(c.filename, c.solo) for c in suspect] == [("img5.jpg", True)]
    with scope() as session:
        assert "img5.jpg" not in {
            c.filename
            for c in claim_items(session, 8, "v1", worker="w", lease_seconds=60, suspects=False)
        }


def test_a_cap_bounds_what_one_tenant_has_running(database: str) -> None:
    capped = _keys(1)[0]
    _job(50, owner_id=capped)
    with scope() as session:
        first = claim_items(session, 8, "v1", worker="w", lease_seconds=60, cap_per_tenant=10)
        second = claim_items(session, 8, "v1", worker="w", lease_seconds=60, cap_per_tenant=10)
    assert (len(first), len(second)) == (8, 2)


def test_results_are_written_once_and_the_job_ends_with_the_right_status(database: str) -> None:
    job_id = _job(3, failed=1)
    assert _job_row(job_id).failed == 1  # the intake's failure counts from the start
    with scope() as session:
        claimed = claim(session, 10, "v1")
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
    assert SENT.finished.count(job_id) == 1  # announced once, after the commit that ended it
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
            claimed = claim(session, size, "v1")
        assert {c.job_id for c in claimed} == {job_id}
        with scope() as session:
            record_results(session, _results(claimed, fail=fail), worker="w", inference_ms=1)
    assert _job_row(bad).status == JobStatus.FAILED
    assert _job_row(bad).error == "no image could be classified: broken"
    assert _job_row(good).status == JobStatus.SUCCEEDED
    assert _job_row(good).error is None


def test_cancel_ends_queued_and_running_items_and_keeps_finished_ones(database: str) -> None:
    job_id = _job(6)
    with scope() as session:
        done = claim(session, 1, "v1")
    with scope() as session:
        record_results(session, _results(done), worker="w", inference_ms=1)
    with scope() as session:
        running = claim(session, 2, "v1")
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


def _lapse(job_id: str) -> None:
    """What a dead or stalled worker's items look like: nobody extends their lease."""
    with scope() as session:
        session.execute(
            update(Item)
            .where(Item.job_id == job_id, Item.status == "running")
            .values(lease_until=utcnow() - timedelta(seconds=1))
        )


def _attempts(job_id: str) -> list[tuple[str, str, int, bool]]:
    with scope(write=False) as session:
        rows = session.execute(
            select(Item.filename, Item.status, Item.attempts, Item.solo)
            .where(Item.job_id == job_id)
            .order_by(Item.position)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def test_only_items_in_a_pass_are_charged_when_their_worker_dies(database: str) -> None:
    job_id = _job(4)
    with scope() as session:
        claimed = claim(session, 4)
        begin_pass(session, [c.id for c in claimed[:2]], "w", 60)  # two entered decoding
    with scope() as session:
        assert requeue_stale(session, 60, 3) == []  # leases still running
    assert extend_leases_of("w") == 4
    _lapse(job_id)
    with scope() as session:
        assert requeue_stale(session, 60, 3) == [job_id]
    assert _attempts(job_id) == [
        ("img0.jpg", "queued", 1, True),  # suspects: charged, and run alone next
        ("img1.jpg", "queued", 1, True),
        ("img2.jpg", "queued", 0, False),  # merely claimed: back as they were
        ("img3.jpg", "queued", 0, False),
    ]


def extend_leases_of(worker: str) -> int:
    with scope() as session:
        return extend_leases(session, worker, 60)


def test_a_task_that_ends_early_releases_what_it_holds(database: str) -> None:
    job_id = _job(3)
    with scope() as session:
        claimed = claim(session, 3)
        begin_pass(session, [claimed[0].id], "w", 60)
    with scope() as session:
        assert release(session, [c.id for c in claimed], "someone else", 3) == []
        assert release(session, [c.id for c in claimed], "w", 3) == [job_id]
    assert [(a[1], a[2], a[3]) for a in _attempts(job_id)] == [
        ("queued", 1, True),
        ("queued", 0, False),
        ("queued", 0, False),
    ]


def test_a_cancelled_item_claimed_ahead_is_neither_charged_nor_run(database: str) -> None:
    job_id, other = _job(2), _job(1)
    with scope() as session:
        claimed = claim(session, 3)
    with scope() as session:
        cancel_job(session, job_id, None)
    with scope() as session:
        to_run = begin_pass(session, [c.id for c in claimed], "w", 60)
    assert to_run == {c.id for c in claimed if c.job_id == other}
    assert [a[2] for a in _attempts(job_id)] == [0, 0]


def test_an_item_that_kills_its_workers_alone_fails_alone(database: str) -> None:
    poison = _job(1)
    healthy = _job(3)
    with scope() as session:
        claimed = claim(session, 4)
        begin_pass(session, [c.id for c in claimed], "w", 60)
    _lapse(poison)
    _lapse(healthy)
    with scope() as session:
        requeue_stale(session, 60, 3)
    # Each suspect now runs alone: the healthy ones succeed, the poison kills again.
    for _ in range(4):
        with scope() as session:
            [alone] = claim(session, 4)
            begin_pass(session, [alone.id], "w", 60)
        if alone.job_id == healthy:
            with scope() as session:
                record_results(session, _results([alone]), worker="w", inference_ms=1)
    assert [a[2] for a in _attempts(healthy)] == [1 + 1] * 3  # once in the batch, once alone
    _lapse(poison)
    with scope() as session:
        assert requeue_stale(session, 60, 3) == [poison]
    with scope() as session:
        [alone] = claim(session, 4)
        begin_pass(session, [alone.id], "w", 60)
    assert alone.job_id == poison
    _lapse(poison)
    with scope() as session:
        assert requeue_stale(session, 60, 3) == []
    with scope(write=False) as session:
        item = session.scalars(select(Item).where(Item.job_id == poison)).one()
    assert item.status == "failed"
    assert item.error is not None
    assert "abandoned after 3 attempts (MAX_ITEM_ATTEMPTS)" in item.error
    assert (_job_row(poison).status, _job_row(poison).failed) == (JobStatus.FAILED, 1)
    assert _job_row(healthy).status == JobStatus.SUCCEEDED


def test_webhook_events_are_written_with_the_state_they_announce(database: str) -> None:
    job_id = _job(2, webhook_events=["job.started"])
    quiet = _job(1)  # no webhook_url: no events
    with scope() as session:
        claimed = claim(session, 1, "v1")
    with scope() as session:
        record_results(session, _results(claimed), worker="w", inference_ms=1)
    with scope() as session:
        rest = claim(session, 5, "v1")
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
        claimed = claim(session, 1, "v1")
    assert [c.job_id for c in claimed] == [first]
    with scope() as session:
        record_results(session, _results(claimed, label="glacier"), worker="w", inference_ms=1)

    again, other_model = _job(2), _job(1)  # every staged item has sha256 "000…"
    with scope() as session:
        claimed = claim(session, 2, "v1")
        reused, to_run = reuse_known_results(session, claimed, "v1", worker="w")
    assert (len(reused), to_run) == (2, [])
    job = _job_row(again)
    assert (job.status, job.succeeded) == (JobStatus.SUCCEEDED, 2)
    with scope(write=False) as session:
        items = session.scalars(select(Item).where(Item.job_id == again)).all()
        assert {(i.label, i.reused_from is not None) for i in items} == {("glacier", True)}
        assert {i.model_version for i in items} == {"v1"}  # each item names its model
    with scope() as session:  # the same weights at another precision run the model again
        claimed = claim(session, 1, "v1-fp32")
        assert [c.job_id for c in claimed] == [other_model]
        reused, to_run = reuse_known_results(session, claimed, "v1-fp32", worker="w")
    assert (reused, len(to_run)) == ([], 1)


def test_known_results_are_reused_only_within_their_owner(database: str) -> None:
    with scope() as session:
        owners = [create_key(session, name)[0].id for name in ("a", "b")]
    first = _job(1, owner_id=owners[0])
    with scope() as session:
        claimed = claim(session, 1, "v1")
        assert [c.job_id for c in claimed] == [first]
        record_results(session, _results(claimed, label="glacier"), worker="w", inference_ms=1)

    same_owner, other_owner, anonymous = (
        _job(1, owner_id=owners[0]),
        _job(1, owner_id=owners[1]),
        _job(1),
    )  # the same bytes (sha256 "000…") from three callers
    with scope() as session:
        claimed = claim(session, 3, "v1")
        reused, to_run = reuse_known_results(session, claimed, "v1", worker="w")
    assert [c.job_id for c in reused] == [same_owner]
    assert {c.job_id for c in to_run} == {other_owner, anonymous}


def _finished_job(session: UnitOfWork, storage: LocalStorage, finished_ago: timedelta) -> str:
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
    report = sweep(settings, UnitOfWorkFactory(settings), storage)
    assert (report.orphans, report.idempotency_keys) == (1, 1)
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == sorted(
        [kept, "orphan-young"]
    )
    with scope(write=False) as session:
        assert [k.key for k in session.scalars(select(IdempotencyKey))] == ["fresh"]


def test_a_receiver_gets_a_job_events_in_order(database: str) -> None:
    job_id = _job(1, webhook_events=["job.started", "job.progress"])
    written = utcnow()
    names = ["job.started", "job.progress", "job.succeeded"]
    ids = [f"msg_{i}_{new_id()[:30]}" for i in range(3)]
    with scope() as session:
        for i, (event_id, kind) in enumerate(zip(ids, names, strict=True)):
            session.add(
                WebhookEvent(
                    id=event_id,
                    job_id=job_id,
                    type=kind,
                    url="https://hooks.example/in",
                    body="{}",
                    status="pending",
                    attempts=0,
                    next_attempt_at=written,
                    created_at=written + timedelta(milliseconds=i),
                )
            )
    with scope(write=False) as session:
        assert due_events(session) == [ids[0]]  # the later ones wait behind it
    with scope() as session:
        assert claim_event(session, ids[2], SETTINGS) is None
        first = claim_event(session, ids[0], SETTINGS)
    assert first is not None
    delivered = Outcome(WebhookEventStatus.DELIVERED, 200, None, None)
    before = len(SENT.events)
    with scope() as session:
        record_attempt(session, first, Attempt(delivered, utcnow(), 1.0))
    assert SENT.events[before:] == [ids[1]]  # the next one goes out at once, after the commit


def test_a_stalled_worker_writes_nothing_for_items_taken_back(database: str) -> None:
    job_id = _job(1)
    with scope() as session:
        [item] = claim_items(session, 1, "v1", worker="stalled", lease_seconds=60)
        begin_pass(session, [item.id], "stalled", 60)
    _lapse(job_id)  # it stopped beating
    with scope() as session:
        requeue_stale(session, 60, 3)
    with scope() as session:
        [again] = claim_items(session, 1, "v1", worker="live", lease_seconds=60)
    with scope() as session:  # the stalled one wakes up and lands its batch late
        late = _results([item], label="forest")
        assert record_results(session, late, worker="stalled", inference_ms=1) == set()
        assert record_results(session, _results([again]), worker="live", inference_ms=1) == {
            item.id
        }
    with scope(write=False) as session:
        assert session.scalars(select(Item.label).where(Item.job_id == job_id)).one() == "sea"
