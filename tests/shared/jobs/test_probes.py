"""Whether a job has an item of some kind."""

from __future__ import annotations

from sqlalchemy import select

from shared.db.models import Item, ItemStatus, Job
from shared.jobs.probes import job_has_item
from tests.shared.database import add_job, scope


def test_a_job_has_an_item_only_if_one_meets_every_criterion(database: str) -> None:
    queued = add_job(2)
    refused = add_job(0, failed=1)
    with scope(write=False) as session:
        with_queued = set(
            session.scalars(select(Job.id).where(job_has_item(Item.status == ItemStatus.QUEUED)))
        )
        with_queued_suspect = set(
            session.scalars(
                select(Job.id).where(
                    job_has_item(Item.status == ItemStatus.QUEUED, Item.solo.is_(True))
                )
            )
        )
    assert with_queued == {queued}
    assert refused not in with_queued
    assert with_queued_suspect == set()
