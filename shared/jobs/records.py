"""Jobs as the API sees them: create, read, list, cancel, delete, their results, and
sending their final webhook event again."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, func, insert, select, update

from shared import metrics, outbox, unit_of_work
from shared.access.usage import FAILED, count_usage
from shared.db.models import Item, ItemStatus, Job, JobSource, JobStatus, WebhookEvent, utcnow
from shared.errors import Conflict, InvalidInput, NotFound
from shared.jobs.events import announce_final
from shared.jobs.intake import StagedItem, storage_prefix
from shared.jobs.progress import refresh_job
from shared.storage import Storage
from shared.text_rules import unstorable
from shared.unit_of_work import UnitOfWork
from shared.webhooks import delivery


def create_job(
    session: UnitOfWork,
    job_id: str,
    staged: list[StagedItem],
    *,
    owner_id: str | None = None,
    webhook_url: str | None = None,
    webhook_events: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    source: JobSource = JobSource.JOBS,
    model_version: str | None = None,
    retry_of: str | None = None,
) -> Job:
    """Insert the job and its items (the caller adds its message to the outbox).

    `model_version` pins the job to a model (`shared.jobs.versions`); None leaves it
    to the first worker that claims it."""
    now = utcnow()
    job = Job(
        id=job_id,
        owner_id=owner_id,
        status=JobStatus.QUEUED,
        source=source,
        created_at=now,
        total=len(staged),
        failed=sum(item.error is not None for item in staged),
        webhook_url=webhook_url,
        webhook_events=webhook_events or [],
        client_metadata=metadata or {},
        model_version=model_version,
        retry_of=retry_of,
    )
    session.add(job)
    session.flush()
    metrics.items_finished(session, ItemStatus.FAILED, job.failed)  # refused at intake
    count_usage(session, owner_id, FAILED, job.failed)
    session.execute(
        insert(Item),
        [
            {
                "id": item.id,
                "job_id": job_id,
                "position": item.position,
                "filename": item.filename,
                "sha256": item.sha256,
                "size_bytes": item.size_bytes,
                "storage_key": item.storage_key,
                "source_url": item.source_url,
                "custom_id": item.custom_id if item.custom_id is not None else item.filename,
                "status": ItemStatus.QUEUED if item.error is None else ItemStatus.FAILED,
                "error": item.error,
                "created_at": now,
                "finished_at": None if item.error is None else now,
                "attempts": 0,
            }
            for item in staged
        ],
    )
    return job


def get_job(session: UnitOfWork, job_id: str, owner: str | None = None) -> Job:
    """The job, if `owner` may see it (None: any job; a server without keys).

    Another key's job is answered exactly like a missing one, so ids cannot be probed.
    """
    job = session.get(Job, job_id)
    if job is None or (owner is not None and job.owner_id != owner):
        raise NotFound(f"no job with id {job_id!r}")
    return job


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    next_cursor: str | None


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *shape: type) -> list[Any]:
    """The values of a cursor this service issued: a list of exactly `shape`'s types.

    Anything else that decodes (another length, another type, NUL bytes) is
    refused like garbage is, so no crafted cursor reaches a query.
    """
    refused = InvalidInput(f"cursor {cursor[:80]!r} is not one this service issued")
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and binascii are ValueErrors
        raise refused from exc
    if not isinstance(values, list) or len(values) != len(shape):
        raise refused
    for value, expected in zip(values, shape, strict=True):
        if type(value) is not expected or (isinstance(value, str) and unstorable(value)):
            raise refused
    return values


def _job_cursor(cursor: str) -> tuple[datetime, str]:
    created, last_id = decode_cursor(cursor, str, str)
    try:
        at = datetime.fromisoformat(created)
    except ValueError as exc:
        raise InvalidInput(f"cursor {cursor[:80]!r} is not one this service issued") from exc
    if at.tzinfo is None:
        raise InvalidInput(f"cursor {cursor[:80]!r} is not one this service issued")
    return at, last_id


@dataclass(frozen=True)
class JobFilter:
    """Which of the caller's jobs a listing holds (None: no condition)."""

    owner: str | None = None
    status: str | None = None
    source: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None

    def where(self, query: Select[Any]) -> Select[Any]:
        conditions = {
            Job.owner_id: self.owner,
            Job.status: self.status,
            Job.source: self.source,
        }
        for column, value in conditions.items():
            if value is not None:
                query = query.where(column == value)
        if self.created_after is not None:
            query = query.where(Job.created_at >= self.created_after)
        if self.created_before is not None:
            query = query.where(Job.created_at < self.created_before)
        return query


def list_jobs(session: UnitOfWork, which: JobFilter, *, limit: int, cursor: str | None) -> Page:
    """Newest first, keyset-paginated on (created_at, id)."""
    query = which.where(select(Job)).order_by(Job.created_at.desc(), Job.id.desc())
    if cursor:
        at, last_id = _job_cursor(cursor)
        query = query.where((Job.created_at < at) | ((Job.created_at == at) & (Job.id < last_id)))
    jobs = list(session.scalars(query.limit(limit + 1)))
    more = len(jobs) > limit
    jobs = jobs[:limit]
    next_cursor = encode_cursor([jobs[-1].created_at.isoformat(), jobs[-1].id]) if more else None
    return Page(jobs, next_cursor)


def count_jobs(session: UnitOfWork, which: JobFilter) -> int:
    return int(session.scalar(which.where(select(func.count()).select_from(Job))) or 0)


@dataclass(frozen=True)
class ItemFilter:
    """Which items of a job a results page holds (None: every one)."""

    status: str | None = None
    label: str | None = None


def results_page(
    session: UnitOfWork,
    job_id: str,
    *,
    owner: str | None,
    limit: int,
    cursor: str | None,
    which: ItemFilter = ItemFilter(),
) -> Page:
    get_job(session, job_id, owner)
    after = decode_cursor(cursor, int)[0] if cursor else -1
    if not -1 <= after < 2**31:  # positions are 32-bit integers in the database
        raise InvalidInput(f"cursor {cursor!r} is not one this service issued")
    query = select(Item).where(Item.job_id == job_id, Item.position > after)
    if which.status is not None:
        query = query.where(Item.status == which.status)
    if which.label is not None:
        query = query.where(Item.label == which.label)
    items = list(session.scalars(query.order_by(Item.position).limit(limit + 1)))
    more = len(items) > limit
    items = items[:limit]
    return Page(items, encode_cursor([items[-1].position]) if more else None)


def cancel_job(session: UnitOfWork, job_id: str, owner: str | None) -> Job:
    session.begin_write()
    _unfinished(get_job(session, job_id, owner))
    now = utcnow()
    # The items are locked before the job row, the order a worker recording a batch
    # (and a claim) takes them: a cancel landing beside a batch waits for it instead
    # of holding the job while the batch holds the items (a deadlock Postgres breaks
    # by failing one of the two). Running items end too: a batch that lands later
    # writes only over running items, so it cannot bring the counts or status back.
    skipped = session.execute(
        update(Item)
        .where(Item.job_id == job_id, Item.status.in_([ItemStatus.QUEUED, ItemStatus.RUNNING]))
        .values(status=ItemStatus.SKIPPED, finished_at=now, error="job cancelled")
    )
    locked = select(Job).where(Job.id == job_id).with_for_update()
    job = session.scalars(locked.execution_options(populate_existing=True)).one_or_none()
    if job is None:  # deleted meanwhile
        raise NotFound(f"no job with id {job_id!r}")
    _unfinished(job)  # a batch that landed first may have ended it: then nothing changed
    metrics.items_finished(session, ItemStatus.SKIPPED, int(skipped.rowcount or 0))  # type: ignore[attr-defined]
    job.status = JobStatus.CANCELLED
    job.finished_at = now
    refresh_job(session, job_id)
    announce_final(session, job)
    outbox.add_finished(session, job.id)
    metrics.job_finished(session, job)
    return job


def _unfinished(job: Job) -> None:
    if JobStatus(job.status).is_final:
        raise Conflict(f"job {job.id} already finished with status {job.status}")


def delete_job(session: UnitOfWork, storage: Storage, job_id: str, owner: str | None) -> None:
    session.begin_write()
    get_job(session, job_id, owner)
    session.execute(delete(Item).where(Item.job_id == job_id))
    session.execute(delete(Job).where(Job.id == job_id))
    # Files go once the rows are gone: a crash in between leaves orphans the sweeper
    # removes, never a job whose files are gone.
    unit_of_work.after_commit(session, lambda: storage.delete_prefix(storage_prefix(job_id)))


def redeliver_final_event(session: UnitOfWork, job_id: str, owner: str | None) -> WebhookEvent:
    """Send the caller's job's final event again (`shared.webhooks.delivery`)."""
    session.begin_write()
    get_job(session, job_id, owner)
    return delivery.redeliver_final_event(session, job_id)
