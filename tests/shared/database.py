"""What the database tests share: the settings the `database` fixture points at, a
recording sender, units of work, and helpers that make jobs and results.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import event, select, update

from shared.access.keys import create_key
from shared.db.models import (
    Item,
    Job,
    JobSource,
    JobStatus,
    WebhookEvent,
    new_id,
    utcnow,
)
from shared.jobs.intake import StagedItem
from shared.jobs.processing import (
    Claimed,
    ItemResult,
    claim_items,
    extend_leases,
)
from shared.jobs.records import create_job
from shared.settings import Settings
from shared.storage import LocalStorage
from shared.unit_of_work import UnitOfWork, UnitOfWorkFactory

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


def claim(session: UnitOfWork, limit: int, version: str = "v1", worker: str = "w") -> list[Claimed]:
    return claim_items(session, limit, version, worker=worker, lease_seconds=60)


def add_job(
    n: int,
    failed: int = 0,
    webhook_events: list[str] | None = None,
    owner_id: str | None = None,
    source: JobSource = JobSource.JOBS,
    same_bytes: bool = True,
) -> str:
    """A job of `n` images (of the same bytes unless `same_bytes` is False) and `failed`
    files refused at intake."""
    job_id = new_id()
    staged = [
        StagedItem(
            new_id(), i, f"img{i}.jpg", 10, "0" * 64 if same_bytes else new_id(), f"k/{i}", None
        )
        for i in range(n)
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


def results_for(
    claimed: list[Claimed], label: str = "sea", fail: set[str] | None = None, version: str = "v1"
) -> list[ItemResult]:
    fail = fail or set()
    return [
        ItemResult(c.id, c.job_id, None, None, None, "broken")
        if c.filename in fail
        else ItemResult(c.id, c.job_id, label, 0.9, {label: 0.9}, None, model_version=version)
        for c in claimed
    ]


def job_row(job_id: str) -> Job:
    with scope(write=False) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def keys_with(*weights: int) -> list[str]:
    with scope() as session:
        return [create_key(session, f"tenant{i}", weight)[0].id for i, weight in enumerate(weights)]


def owners_of(claimed: list[Claimed]) -> Counter[str | None]:
    with scope(write=False) as session:
        owner_of = {row.id: row.owner_id for row in session.execute(select(Job.id, Job.owner_id))}
    return Counter(owner_of[c.job_id] for c in claimed)


def lapse(job_id: str) -> None:
    """What a dead or stalled worker's items look like: nobody extends their lease."""
    with scope() as session:
        session.execute(
            update(Item)
            .where(Item.job_id == job_id, Item.status == "running")
            .values(lease_until=utcnow() - timedelta(seconds=1))
        )


def attempts_of(job_id: str) -> list[tuple[str, str, int, bool]]:
    with scope(write=False) as session:
        rows = session.execute(
            select(Item.filename, Item.status, Item.attempts, Item.solo)
            .where(Item.job_id == job_id)
            .order_by(Item.position)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def extend_leases_of(worker: str) -> int:
    with scope() as session:
        return extend_leases(session, worker, 60)


def finished_job(session: UnitOfWork, storage: LocalStorage, finished_ago: timedelta) -> str:
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


Result = TypeVar("Result")


def statements_while(session: UnitOfWork, action: Callable[[], Result]) -> tuple[Result, int]:
    """What `action` returned, and how many statements it sent to the database."""
    count = 0

    def counted(*_: Any) -> None:
        nonlocal count
        count += 1

    with _before_each_statement(session, counted):
        return action(), count


Plan = dict[str, Any]


def rows_read_while(session: UnitOfWork, action: Callable[[], Result]) -> tuple[Result, int]:
    """What `action` returned, and the most rows any step of any of its statements read
    (Postgres): each statement is first run under EXPLAIN ANALYZE in a savepoint that is
    rolled back, so the statement itself then runs on the same rows."""
    most = 0

    def explained(
        _: Any, cursor: Any, statement: str, parameters: Any, __: Any, many: bool
    ) -> None:
        nonlocal most
        if many or not statement.lstrip().startswith(("SELECT", "UPDATE", "DELETE")):
            return
        cursor.execute("SAVEPOINT explained")
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
        plan = cursor.fetchone()[0][0]["Plan"]
        cursor.execute("ROLLBACK TO SAVEPOINT explained")
        most = max(most, _most_rows(plan))

    with _before_each_statement(session, explained):
        return action(), most


@contextmanager
def _before_each_statement(session: UnitOfWork, listener: Callable[..., None]) -> Iterator[None]:
    """`listener` hears each statement the session's engine sends, while inside."""
    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", listener)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", listener)


def _most_rows(plan: Plan) -> int:
    """The most rows one step of `plan` read: what it returned and what it filtered out."""
    read = int(plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1)) + sum(
        int(plan.get(key, 0)) for key in ("Rows Removed by Filter", "Rows Removed by Index Recheck")
    )
    return max([read, *(_most_rows(child) for child in plan.get("Plans", []))])
