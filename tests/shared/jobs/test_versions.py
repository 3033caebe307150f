"""Model versions: which ones live workers serve, which one a job is pinned to, and
that a worker runs only the jobs pinned to its version."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from shared import heartbeats
from shared.db.models import Item, Job, utcnow
from shared.errors import InvalidInput
from shared.heartbeats import Serving
from shared.jobs.processing import _only_of_version, lease_items
from shared.jobs.versions import (
    live_versions,
    pin_version,
    unpin_unserved,
    version_for_new_jobs,
)
from tests.shared import database as db
from tests.shared.database import add_job, claim, scope


def beat(
    name: str, serving: Serving | None, started_minutes_ago: int, role: str = "classify"
) -> None:
    with scope() as session:
        started = utcnow() - timedelta(minutes=started_minutes_ago)
        heartbeats.beat(session, name, role, "host", started, serving)


def pin(job_id: str, version: str | None) -> None:
    with scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.model_version = version


def versions_of(job_id: str) -> tuple[str | None, set[str | None]]:
    with scope(write=False) as session:
        job = session.get(Job, job_id)
        assert job is not None
        items = session.scalars(select(Item.model_version).where(Item.job_id == job_id))
        return job.model_version, set(items)


def test_live_versions_newest_first_and_the_one_new_jobs_get(database: str) -> None:
    beat("classify@a:1", Serving("old-int8", "int8", 0.929), started_minutes_ago=60)
    beat("classify@a:2", Serving("old-int8", "int8", 0.929), started_minutes_ago=50)
    beat("classify@b:1", Serving("new-int8", "int8", 0.941), started_minutes_ago=1)
    beat("webhooks@c:1", None, started_minutes_ago=1, role="webhooks")
    with scope(write=False) as session:
        versions = live_versions(session, 30)
    assert [(v.version, v.workers, v.accuracy) for v in versions] == [
        ("new-int8", 1, 0.941),
        ("old-int8", 2, 0.929),
    ]
    assert version_for_new_jobs(versions, db.SETTINGS) == "new-int8"
    frozen = db.SETTINGS.model_copy(update={"default_model_version": "old-int8"})
    assert version_for_new_jobs(versions, frozen) == "old-int8"
    gone = db.SETTINGS.model_copy(update={"default_model_version": "retired"})
    assert version_for_new_jobs(versions, gone) == "new-int8"  # no live worker serves it


def test_a_job_is_pinned_at_admission_and_an_unserved_version_is_refused(database: str) -> None:
    with scope() as session:
        assert pin_version(session, None, db.SETTINGS) is None  # no worker yet: first claim pins
    beat("classify@a:1", Serving("v-a", "int8", None), started_minutes_ago=10)
    with scope() as session:
        assert pin_version(session, None, db.SETTINGS) == "v-a"
        assert pin_version(session, "v-a", db.SETTINGS) == "v-a"
        with pytest.raises(InvalidInput, match=r"no live worker serves model 'v-b'.*GET /models"):
            pin_version(session, "v-b", db.SETTINGS)


def test_a_worker_runs_only_jobs_pinned_to_its_version(database: str) -> None:
    for_a, for_b, unpinned = add_job(2), add_job(2), add_job(2)
    pin(for_a, "v-a")
    pin(for_b, "v-b")
    with scope() as session:
        claimed = claim(session, 10, version="v-a")
    assert {c.job_id for c in claimed} == {for_a, unpinned}
    assert versions_of(unpinned)[0] == "v-a"  # pinned by the first worker that ran it
    assert versions_of(for_b)[0] == "v-b"
    with scope() as session:
        assert {c.job_id for c in claim(session, 10, version="v-b")} == {for_b}


def test_items_of_a_job_another_version_pinned_meanwhile_go_back_untouched(
    database: str,
) -> None:
    job_id = add_job(2)
    with scope() as session:
        first = claim(session, 1, version="v-a")  # pins the job to v-a
    with scope() as session:
        # What a v-b worker holds if it picked the job's other item before the pin.
        other = session.scalars(
            select(Item.id).where(Item.job_id == job_id, Item.id != first[0].id)
        ).one()
        leased = lease_items(session, [other], "w-b", 60)
        assert _only_of_version(session, leased, "v-b") == []
    with scope(write=False) as session:
        item = session.get(Item, other)
        assert item is not None
        assert (item.status, item.leased_by, item.attempts) == ("queued", None, 0)


def test_a_job_pinned_before_its_items_were_leased_is_not_read_again(database: str) -> None:
    """Jobs are pinned at admission while a worker lives: the lease says so, and the
    claim reads versions only for jobs it found unpinned (their first claim)."""
    pinned, unpinned = add_job(2), add_job(2)
    pin(pinned, "v-a")
    with scope() as session:
        ids = session.scalars(select(Item.id).where(Item.job_id.in_([pinned, unpinned]))).all()
        leased = lease_items(session, list(ids), "w-a", 60)
        assert {c.job_id: c.pinned for c in leased} == {pinned: "v-a", unpinned: None}
        of_pinned = [c for c in leased if c.job_id == pinned]
        kept, statements = db.statements_while(
            session, lambda: _only_of_version(session, of_pinned, "v-a")
        )
        assert (kept, statements) == (of_pinned, 0)
        kept, statements = db.statements_while(
            session, lambda: _only_of_version(session, leased, "v-a")
        )
        assert (len(kept), statements) == (4, 1)


def test_an_unstarted_job_whose_version_lost_its_workers_is_freed(database: str) -> None:
    waiting, started = add_job(1), add_job(2)
    pin(waiting, "retired")
    pin(started, "retired")
    with scope() as session:
        session.get(Job, started).status = "running"  # type: ignore[union-attr]
        assert unpin_unserved(session, 30) == []  # no live worker at all: nothing changes
    beat("classify@a:1", Serving("current", "int8", None), started_minutes_ago=1)
    with scope() as session:
        assert unpin_unserved(session, 30) == [waiting]
    assert versions_of(waiting)[0] is None  # the next worker to claim it pins it
    assert versions_of(started)[0] == "retired"  # part-run: it keeps its version
