"""The worker's side of the database: claim queued items, record results, recover stragglers.

Every write is guarded by the item's current status, so a task that runs twice
(a redelivered message, a requeued item) writes each result once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, case, func, select, update

from shared import metrics
from shared.access.usage import CLASSIFIED, FAILED, REUSED, count_usage
from shared.db.models import Batch, Item, ItemStatus, Job, JobStatus, new_id, utcnow
from shared.jobs.events import announce_progress, announce_started
from shared.jobs.progress import add_results
from shared.jobs.scheduling import pick_items
from shared.unit_of_work import UnitOfWork


@dataclass(frozen=True)
class Claimed:
    id: str
    job_id: str
    owner_id: str | None  # its job's key (None: anonymous), whose results it may reuse
    filename: str
    storage_key: str | None
    sha256: str | None = None
    solo: bool = False  # a suspect: it runs alone
    source_url: str | None = None  # fetched by the worker instead of read from storage
    pinned: str | None = None  # its job's model version when it was leased (None: not yet)


@dataclass(frozen=True)
class ItemResult:
    id: str
    job_id: str
    label: str | None
    confidence: float | None
    scores: dict[str, float] | None
    error: str | None
    reused_from: str | None = None
    model_version: str | None = None  # the model (weights and precision) that made it
    inference_ms: float | None = None  # its own time in the engine; else a share of its pass


def claim_items(
    session: UnitOfWork,
    limit: int,
    model_version: str,
    *,
    worker: str,
    lease_seconds: float,
    cap_per_tenant: int = 0,
    suspects: bool = True,
    lane: bool = True,
    lane_only: bool = False,
    into_pass: bool = False,
) -> list[Claimed]:
    """The claim step a task runs: lease the items the scheduler picks, start their jobs.

    A claim charges no attempt: an item is charged only when it enters a pass
    (`begin_pass`), so items merely claimed go back uncharged if their worker dies.
    With `into_pass` (the interactive lane, whose items are decoded and run at
    once) the claim is also that charge, in the same transaction.
    """
    ids = pick_items(
        session,
        limit,
        cap_per_tenant=cap_per_tenant,
        suspects=suspects,
        lane=lane,
        lane_only=lane_only,
        version=model_version,
    )
    claimed = lease_items(session, ids, worker, lease_seconds, into_pass=into_pass)
    started = start_jobs(session, {c.job_id for c in claimed}, model_version)
    announce_started(session, started)
    return _only_of_version(session, claimed, model_version)


def _only_of_version(
    session: UnitOfWork, claimed: list[Claimed], model_version: str
) -> list[Claimed]:
    """Give back items whose job another worker pinned to its version meanwhile.

    Two workers of different versions may pick items of one unpinned job at once;
    the first to start it pins it (`start_jobs` locks the job's row), and the
    other's items go back to the queue untouched, so a job never mixes versions.
    """
    if not claimed:
        return claimed
    # A job already pinned when its items were leased keeps that version: only jobs
    # unpinned then (new ones, whose first claim this may be) are read again, after
    # `start_jobs` waited for any other claimer's pin to commit.
    pinned: dict[str, str | None] = {c.job_id: c.pinned for c in claimed if c.pinned}
    unsure = {c.job_id for c in claimed if c.pinned is None}
    if unsure:
        read = select(Job.id, Job.model_version).where(Job.id.in_(unsure))
        pinned.update((job_id, version) for job_id, version in session.execute(read))
    others = [c.id for c in claimed if pinned.get(c.job_id) not in (None, model_version)]
    if others:
        session.execute(
            update(Item)
            .where(Item.id.in_(others))
            .values(
                status=ItemStatus.QUEUED,
                started_at=None,
                leased_by=None,
                lease_until=None,
                in_pass=False,
                attempts=Item.attempts - case((Item.in_pass.is_(True), 1), else_=0),
            )
        )
    return [c for c in claimed if c.id not in others]


def lease_items(
    session: UnitOfWork,
    ids: list[str],
    worker: str,
    lease_seconds: float,
    *,
    into_pass: bool = False,
) -> list[Claimed]:
    """Mark the picked items running, leased to `worker`; in the order they were picked.

    With `into_pass`, they enter their pass too: charged an attempt (`begin_pass`).
    The ids are queued items picked in this transaction under lock (FOR UPDATE on
    Postgres, the write lock on SQLite), so nobody else can have moved them. They
    are matched by id alone: with a status test as well, a planner without
    statistics reads every queued item through the status index to find eight.
    """
    if not ids:
        return []
    now = utcnow()
    rows = list(
        session.execute(
            update(Item)
            .where(Item.id.in_(ids))
            .values(
                status=ItemStatus.RUNNING,
                started_at=now,
                leased_by=worker,
                lease_until=now + timedelta(seconds=lease_seconds),
                in_pass=into_pass,
                attempts=Item.attempts + 1 if into_pass else Item.attempts,
            )
            .returning(
                Item.id,
                Item.job_id,
                Item.filename,
                Item.storage_key,
                Item.sha256,
                Item.solo,
                Item.source_url,
                _JOB_VERSION,
                _JOB_OWNER,
            )
        ).all()
    )
    order = {item_id: i for i, item_id in enumerate(ids)}
    rows.sort(key=lambda row: order[row.id])
    return [
        Claimed(
            row.id,
            row.job_id,
            row.owner,
            row.filename,
            row.storage_key,
            row.sha256,
            row.solo,
            row.source_url,
            row.pinned,
        )
        for row in rows
    ]


# The leased item's job's version and owner, in the lease's RETURNING (SQLite allows
# no joined table there, a subquery it does).
_JOB_VERSION = (
    select(Job.model_version).where(Job.id == Item.job_id).scalar_subquery().label("pinned")
)
_JOB_OWNER = select(Job.owner_id).where(Job.id == Item.job_id).scalar_subquery().label("owner")


def begin_pass(session: UnitOfWork, ids: list[str], worker: str, lease_seconds: float) -> set[str]:
    """Charge an attempt to the items about to be decoded and run; the ones still ours.

    An item whose job was cancelled since the claim (or that the reconciler took
    back) is not among them: it is neither charged nor run.
    """
    if not ids:
        return set()
    return set(
        session.scalars(
            update(Item)
            .where(Item.id.in_(ids), Item.status == ItemStatus.RUNNING, Item.leased_by == worker)
            .values(
                attempts=Item.attempts + 1,
                in_pass=True,
                lease_until=utcnow() + timedelta(seconds=lease_seconds),
            )
            .returning(Item.id)
        )
    )


def still_held(session: UnitOfWork, ids: list[str], worker: str) -> set[str]:
    """Which of `ids` are still running under `worker`'s lease (not cancelled, not taken back)."""
    if not ids:
        return set()
    return set(
        session.scalars(
            select(Item.id).where(
                Item.id.in_(ids), Item.status == ItemStatus.RUNNING, Item.leased_by == worker
            )
        )
    )


def extend_leases(session: UnitOfWork, worker: str, lease_seconds: float) -> int:
    """A live worker that makes progress keeps what it holds: its leases run on."""
    result = session.execute(
        update(Item)
        .where(Item.status == ItemStatus.RUNNING, Item.leased_by == worker)
        .values(lease_until=utcnow() + timedelta(seconds=lease_seconds))
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def start_jobs(session: UnitOfWork, job_ids: set[str], model_version: str) -> list[Job]:
    """Jobs still queued become running, with the model version that runs them."""
    starting = session.scalars(
        select(Job).where(Job.id.in_(job_ids), Job.status == JobStatus.QUEUED).with_for_update()
    ).all()
    now = utcnow()
    for job in starting:
        job.status, job.started_at = JobStatus.RUNNING, now
        job.model_version = job.model_version or model_version  # pinned at admission, or now
    return list(starting)


def reuse_known_results(
    session: UnitOfWork, claimed: list[Claimed], model_version: str, *, worker: str
) -> tuple[list[Claimed], list[Claimed]]:
    """The reuse step a task runs: find known results, record them; (reused, still to run).

    `reused` are the items this call wrote, whose uploads are now free to delete; an
    item with a known result that something else ended meanwhile is not run either.
    """
    known = find_known_results(session, claimed, model_version)
    written = record_results(session, known, worker=worker, inference_ms=0.0, batch=False)
    settled = {result.id for result in known}
    return (
        [c for c in claimed if c.id in written],
        [c for c in claimed if c.id not in settled],
    )


def find_known_results(
    session: UnitOfWork, claimed: list[Claimed], model_version: str
) -> list[ItemResult]:
    """Results this model version already made for the same bytes of the same owner.

    Reuse stays inside the owner (the API key, or the pool of anonymous uploads):
    a result reused across keys would tell one tenant what another one sent.
    """
    hashes = {c.sha256 for c in claimed if c.sha256}
    if not hashes:
        return []
    # Driven by the hash index: the items of these bytes, each with its owner, matched
    # to the claimed items' owners (anonymous with anonymous) here. Joined to the
    # claimed jobs' owners instead, Postgres walked every job of that owner. The status
    # is tested here too: tested in the query, a planner without statistics read every
    # succeeded item through the status index instead of the few of these hashes.
    rows = session.execute(
        select(
            Job.owner_id,
            Item.sha256,
            Item.id,
            Item.status,
            Item.label,
            Item.confidence,
            Item.scores,
        )
        .join(Job, Job.id == Item.job_id)
        .where(
            Item.sha256.in_(hashes),
            Item.reused_from.is_(None),
            Item.model_version == model_version,
        )
    )
    known: dict[tuple[str | None, str], Any] = {}
    for row in rows:
        if row.status == ItemStatus.SUCCEEDED:
            known.setdefault((row.owner_id, row.sha256), row)
    results = []
    for item in claimed:
        match = known.get((item.owner_id, item.sha256 or ""))
        if match is not None:
            results.append(
                ItemResult(
                    item.id,
                    item.job_id,
                    match.label,
                    match.confidence,
                    match.scores,
                    None,
                    reused_from=match.id,
                    model_version=model_version,
                )
            )
    return results


def record_results(
    session: UnitOfWork,
    results: list[ItemResult],
    *,
    worker: str,
    inference_ms: float,
    progress_interval_seconds: float = 10.0,
    batch: bool = True,
) -> set[str]:
    """The record step a task runs: write items, note the batch, settle the jobs.

    Returns the ids it wrote: only their uploads are this run's to delete (another
    run may hold an item the reconciler took back from this one).
    """
    batch_id = new_id() if batch else None
    written = write_item_results(session, results, inference_ms, batch_id, worker)
    if not written:
        return set()
    if batch_id is not None:
        record_batch(session, batch_id, written, worker=worker, inference_ms=inference_ms)
    count_finished_items(session, written)
    settle_jobs(session, written, progress_interval_seconds)
    return {result.id for result in written}


def write_item_results(
    session: UnitOfWork,
    results: list[ItemResult],
    inference_ms: float,
    batch_id: str | None,
    worker: str,
) -> list[ItemResult]:
    """Write results over items still running under `worker`'s lease; the ones written.

    A cancel, or the reconciler taking back the items of a worker that stalled, may
    have ended or moved some items since they were claimed: a late result for
    those is neither written nor counted (whoever holds them now writes theirs).
    """
    if not results:
        return []
    still_running = set(
        session.scalars(
            select(Item.id)
            .where(
                Item.id.in_([r.id for r in results]),
                Item.status == ItemStatus.RUNNING,
                Item.leased_by == worker,
            )
            .with_for_update()
        )
    )
    written = [r for r in results if r.id in still_running]
    if not written:
        return []
    table = cast(Table, Item.__table__)
    session.connection().execute(
        table.update()
        .where(table.c.id == bindparam("item_id"), table.c.status == ItemStatus.RUNNING)
        .values(
            status=bindparam("new_status"),
            **{"class": bindparam("new_label")},
            confidence=bindparam("new_confidence"),
            scores=bindparam("new_scores"),
            error=bindparam("new_error"),
            reused_from=bindparam("new_reused_from"),
            model_version=bindparam("new_model_version"),
            batch_id=batch_id,
            finished_at=utcnow(),
            inference_ms=bindparam("new_inference_ms"),
        ),
        [
            {
                "item_id": r.id,
                "new_status": ItemStatus.FAILED if r.error else ItemStatus.SUCCEEDED,
                "new_label": r.label,
                "new_confidence": r.confidence,
                "new_scores": r.scores,
                "new_error": r.error,
                "new_reused_from": r.reused_from,
                "new_model_version": r.model_version,
                # The item's own time in the engine, or its share of the pass it was in.
                "new_inference_ms": round(
                    r.inference_ms if r.inference_ms is not None else inference_ms / len(results),
                    3,
                ),
            }
            for r in written
        ],
    )
    return written


def record_batch(
    session: UnitOfWork,
    batch_id: str,
    written: list[ItemResult],
    *,
    worker: str,
    inference_ms: float,
) -> None:
    """One forward pass: a batch row and the batch histograms."""
    size = sum(r.error is None for r in written)
    session.add(
        Batch(
            id=batch_id,
            worker=worker,
            size=size,
            jobs=len({r.job_id for r in written}),
            inference_ms=inference_ms,
            created_at=utcnow(),
        )
    )
    metrics.observe(session, metrics.BATCH_SIZE, size)
    metrics.observe(session, metrics.BATCH_INFERENCE_SECONDS, inference_ms / 1000)


def count_finished_items(session: UnitOfWork, written: list[ItemResult]) -> None:
    failed = sum(r.error is not None for r in written)
    metrics.items_finished(session, ItemStatus.FAILED, failed)
    metrics.items_finished(session, ItemStatus.SUCCEEDED, len(written) - failed)


def settle_jobs(
    session: UnitOfWork, written: list[ItemResult], progress_interval_seconds: float
) -> None:
    """Add the results to each touched job's counts, send its progress event, observe its
    items' latency, and count its key's usage (the jobs are loaded here anyway: no query
    of their own)."""
    per_job = Counter(r.job_id for r in written)
    failed = Counter(r.job_id for r in written if r.error is not None)
    now = utcnow()
    jobs = add_results(
        session, {job_id: (n - failed[job_id], failed[job_id]) for job_id, n in per_job.items()}
    )
    for result in written:
        if result.job_id not in jobs:
            continue  # deleted meanwhile: nobody's usage
        owner = jobs[result.job_id].owner_id
        count_usage(session, owner, FAILED if result.error else CLASSIFIED, 1)
        if result.reused_from is not None:
            count_usage(session, owner, REUSED, 1)
    for job_id in sorted(jobs):
        job = jobs[job_id]
        announce_progress(session, job, progress_interval_seconds)
        latency = (now - job.created_at).total_seconds()
        metrics.observe(session, metrics.ITEM_LATENCY_SECONDS, latency, per_job[job_id])


def queued_beyond(session: UnitOfWork, count: int) -> bool:
    """Whether more than `count` items wait in the queue, whoever they belong to."""
    waiting = select(Item.id).where(Item.status == ItemStatus.QUEUED).limit(count + 1).subquery()
    return int(session.scalar(select(func.count()).select_from(waiting)) or 0) > count


def queued_count(session: UnitOfWork, job_id: str) -> int:
    return int(
        session.scalar(
            select(func.count()).where(Item.job_id == job_id, Item.status == ItemStatus.QUEUED)
        )
        or 0
    )
