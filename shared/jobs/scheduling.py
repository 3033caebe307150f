"""Which queued items the next batch takes: the interactive lane first, then a fair share by tenant.

A tenant is an API key (anonymous callers together are one tenant). The policy is
start-time fair queueing, a weighted fair-queuing scheme:

- each tenant has a `served` tally, in items over its weight; the slots of a
  batch go one by one to the tenant with work waiting whose tally is lowest,
  so a tenant's share follows its weight, never the number of jobs it splits
  its work into;
- a tenant that comes back after a pause starts from the scheduler's virtual
  time (the lowest tally among tenants with work), not from its old tally: an
  idle spell earns no burst;
- inside a tenant, its jobs go in the order they were made, each job's items in
  order;
- `/predict` items (the interactive lane) are picked the same way but before
  any batch work, so they wait for at most the batch in flight;
- a suspect item (its worker died while it was in a pass) runs alone, so only an
  image that kills a worker by itself uses up its attempts;
- an optional cap bounds the items one tenant has running across all workers.

The tallies and the clock live in the database every worker uses; a claim locks
the clock's row, so workers on every host form batches one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, or_, select, true

from shared.db.models import (
    ApiKey,
    Item,
    ItemStatus,
    Job,
    JobSource,
    JobStatus,
    SchedulerClock,
    TenantShare,
)
from shared.jobs.probes import job_has_item
from shared.unit_of_work import UnitOfWork

ANONYMOUS = "anonymous"  # the tenant of callers without a key; no key id looks like it
# The one message that wakes a worker for the lane (no job id looks like it).
LANE_WAKE_UP = "lane"
# The one message that wakes one more worker while work waits beyond what a worker
# holds: one big job is worked on by every worker, not only by its message's.
HELPER_WAKE_UP = "helper"
CLOCK_ID = 1


@dataclass
class Tenant:
    owner_id: str | None
    weight: float
    tally: float  # service so far, in items over weight, from the virtual time on
    room: int  # items it may still start (its cap less what it has running)
    share: TenantShare | None = None  # its stored tally, None until its first claim

    @property
    def key(self) -> str:
        return self.owner_id or ANONYMOUS


def pick_items(
    session: UnitOfWork,
    limit: int,
    *,
    cap_per_tenant: int = 0,
    suspects: bool = True,
    lane: bool = True,
    lane_only: bool = False,
    version: str | None = None,
) -> list[str]:
    """Ids of queued items for the next batch, in the order the policy gives them.

    Only items of jobs pinned to `version` (or not pinned yet) are picked; None
    picks any. The caller marks them running in the same transaction; on Postgres
    the rows are locked (SKIP LOCKED) so no other claimer takes them meanwhile.
    """
    servable = _servable(version)
    clock = _lock_clock(session)
    in_flight = _running_per_tenant(session) if cap_per_tenant else {}
    if lane or lane_only:
        picked = _pick_fairly(
            session, clock, limit, JobSource.PREDICT, cap_per_tenant, in_flight, servable
        )
        if picked or lane_only:
            return picked
    suspect = _pick_suspect(session, servable) if suspects else None
    if suspect is not None:
        return [suspect]
    return _pick_fairly(session, clock, limit, JobSource.JOBS, cap_per_tenant, in_flight, servable)


def _servable(version: str | None) -> ColumnElement[bool]:
    """Jobs a worker serving `version` may run: pinned to it, or not pinned yet."""
    if version is None:
        return true()
    return or_(Job.model_version.is_(None), Job.model_version == version)


def lane_waiting(session: UnitOfWork, version: str | None = None) -> bool:
    """Whether a /predict item `version` may run is queued: a cheap look, without the
    clock's lock."""
    waiting = session.scalar(
        select(Job.id)
        .where(
            Job.source == JobSource.PREDICT,
            Job.status.in_(_UNFINISHED),
            _servable(version),
            _has_queued_items(),
        )
        .limit(1)
    )
    return waiting is not None


def _lock_clock(session: UnitOfWork) -> SchedulerClock:
    clock = session.scalars(
        select(SchedulerClock).where(SchedulerClock.id == CLOCK_ID).with_for_update()
    ).one_or_none()
    if clock is None:  # a database made without the migration's first row
        clock = SchedulerClock(id=CLOCK_ID, virtual_time=0.0)
        session.add(clock)
        session.flush()
    return clock


def _pick_fairly(
    session: UnitOfWork,
    clock: SchedulerClock,
    limit: int,
    source: JobSource,
    cap_per_tenant: int,
    in_flight: dict[str | None, int],
    servable: ColumnElement[bool],
) -> list[str]:
    tenants = _tenants_with_work(
        session, source, clock.virtual_time, cap_per_tenant, in_flight, servable
    )
    if not tenants:
        return []
    picked: list[str] = []
    open_tenants = [t for t in tenants if t.room > 0]
    while open_tenants and len(picked) < limit:
        quotas = allocate(open_tenants, limit - len(picked))
        for tenant in list(open_tenants):
            wanted = quotas.get(tenant.key, 0)
            if not wanted:
                continue
            ids = _next_items_of(session, tenant.owner_id, source, wanted, servable)
            picked += ids
            tenant.tally += len(ids) / tenant.weight
            tenant.room -= len(ids)
            if len(ids) < wanted or tenant.room <= 0:
                # Drained (or the rest is locked by another claimer), or at its cap.
                open_tenants.remove(tenant)
    # Virtual time moves to the lowest tally among the tenants that had work: a
    # tenant that comes back later (or a new one) starts there, level with them.
    clock.virtual_time = max(clock.virtual_time, min(t.tally for t in tenants))
    _save_tallies(session, tenants)
    return picked


def allocate(tenants: Sequence[Tenant], slots: int) -> dict[str, int]:
    """Slots for each tenant: one at a time to the lowest tally (ties: the key), within room."""
    tally = {t.key: t.tally for t in tenants}
    room = {t.key: t.room for t in tenants}
    weight = {t.key: t.weight for t in tenants}
    quotas: dict[str, int] = {}
    for _ in range(slots):
        open_keys = [key for key in tally if room[key] > quotas.get(key, 0)]
        if not open_keys:
            break
        key = min(open_keys, key=lambda k: (tally[k], k))
        quotas[key] = quotas.get(key, 0) + 1
        tally[key] += 1 / weight[key]
    return quotas


def _has_queued_items() -> ColumnElement[bool]:
    """Whether the job has a queued item that is not a suspect."""
    return job_has_item(Item.status == ItemStatus.QUEUED, Item.solo.is_(False))


_UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)


def _tenants_with_work(
    session: UnitOfWork,
    source: JobSource,
    virtual_time: float,
    cap_per_tenant: int,
    in_flight: dict[str | None, int],
    servable: ColumnElement[bool],
) -> list[Tenant]:
    rows = session.execute(
        select(Job.owner_id, func.coalesce(ApiKey.weight, 1))
        .outerjoin(ApiKey, ApiKey.id == Job.owner_id)
        .where(Job.status.in_(_UNFINISHED), Job.source == source, servable, _has_queued_items())
        .group_by(Job.owner_id, ApiKey.weight)
    ).all()
    keys = [owner or ANONYMOUS for owner, _ in rows]
    stored = {
        share.tenant: share
        for share in session.scalars(select(TenantShare).where(TenantShare.tenant.in_(keys)))
    }
    unlimited = 1 << 30
    tenants = []
    for owner, weight in rows:
        share = stored.get(owner or ANONYMOUS)
        tenants.append(
            Tenant(
                owner_id=owner,
                weight=float(max(int(weight), 1)),
                tally=max(share.served if share else virtual_time, virtual_time),
                room=(cap_per_tenant - in_flight.get(owner, 0)) if cap_per_tenant else unlimited,
                share=share,
            )
        )
    return tenants


def _next_items_of(
    session: UnitOfWork,
    owner_id: str | None,
    source: JobSource,
    count: int,
    servable: ColumnElement[bool],
) -> list[str]:
    """The tenant's next `count` queued items: its oldest job's first, each job's in order."""
    owner = Job.owner_id.is_(None) if owner_id is None else Job.owner_id == owner_id
    job_ids = session.scalars(
        select(Job.id)
        .where(
            owner,
            Job.status.in_(_UNFINISHED),
            Job.source == source,
            servable,
            _has_queued_items(),
        )
        .order_by(Job.created_at, Job.id)
        .limit(count)
    ).all()
    ids: list[str] = []
    for job_id in job_ids:
        ids += session.scalars(
            select(Item.id)
            .where(Item.job_id == job_id, Item.status == ItemStatus.QUEUED, Item.solo.is_(False))
            .order_by(Item.position)
            .limit(count - len(ids))
            .with_for_update(skip_locked=True)  # Postgres: claimers never wait on each other
        ).all()
        if len(ids) >= count:
            break
    return ids


def _pick_suspect(session: UnitOfWork, servable: ColumnElement[bool]) -> str | None:
    """The oldest queued item that runs alone (its worker died while it was in a pass).

    Read through the suspects' own index (`ix_items_suspects`): the job's version is
    tested per suspect, not joined, since a join lets a planner without statistics
    walk every queued item of every servable job instead.
    """
    its_job_servable = select(Job.id).where(Job.id == Item.job_id, servable).limit(1)
    return session.scalars(
        select(Item.id)
        .where(
            Item.status == ItemStatus.QUEUED,
            Item.solo.is_(True),
            its_job_servable.scalar_subquery().is_not(None),
        )
        .order_by(Item.created_at, Item.position)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()


def _running_per_tenant(session: UnitOfWork) -> dict[str | None, int]:
    rows = session.execute(
        select(Job.owner_id, func.count())
        .select_from(Item)
        .join(Job, Job.id == Item.job_id)
        .where(Item.status == ItemStatus.RUNNING)
        .group_by(Job.owner_id)
    ).all()
    return {owner: int(count) for owner, count in rows}


def _save_tallies(session: UnitOfWork, tenants: list[Tenant]) -> None:
    # Each tenant holds the row it was read from: no second read to write it back.
    for tenant in tenants:
        if tenant.share is None:
            session.add(TenantShare(tenant=tenant.key, served=tenant.tally))
        else:
            tenant.share.served = tenant.tally
    session.flush()
