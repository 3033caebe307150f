"""Fair shares by tenant, weights, the interactive lane, suspects alone, the cap."""

from __future__ import annotations

from sqlalchemy import update

from shared.db.models import (
    Item,
    JobSource,
    JobStatus,
)
from shared.jobs.processing import (
    claim_items,
)
from tests.shared.database import (
    add_job,
    claim,
    job_row,
    keys_with,
    owners_of,
    scope,
)


def test_a_tenant_share_does_not_grow_with_the_jobs_it_splits_work_into(database: str) -> None:
    one_zip, many_jobs = keys_with(1, 1)
    zipped = add_job(40, owner_id=one_zip)
    split = [add_job(2, owner_id=many_jobs) for _ in range(20)]
    for _ in range(4):
        with scope() as session:
            batch = claim(session, 8)
        assert owners_of(batch) == {one_zip: 4, many_jobs: 4}
    with scope() as session:
        batch = claim(session, 8)
    # Inside a tenant, its jobs go in the order they were made, each job's items in order.
    assert [c.job_id for c in batch if c.job_id != zipped] == [split[8]] * 2 + [split[9]] * 2
    assert [c.filename for c in batch if c.job_id == zipped] == [
        f"img{i}.jpg" for i in range(16, 20)
    ]
    assert job_row(zipped).status == JobStatus.RUNNING
    assert job_row(zipped).model_version == "v1"


def test_weights_set_the_shares_and_a_one_image_job_goes_into_the_next_batch(
    database: str,
) -> None:
    heavy, light, newcomer = keys_with(3, 1, 1)
    add_job(100, owner_id=heavy)
    add_job(100, owner_id=light)
    with scope() as session:
        assert owners_of(claim(session, 16)) == {heavy: 12, light: 4}
    single = add_job(1, owner_id=newcomer)
    with scope() as session:
        batch = claim(session, 16)
    assert single in {c.job_id for c in batch}  # no wait behind the backlog
    # The newcomer starts from the virtual time, not from nothing: it gets its one
    # image, not every slot until it has caught up with the others.
    assert owners_of(batch)[newcomer] == 1


def test_a_tenant_back_from_a_pause_gets_no_burst(database: str) -> None:
    steady, returning = keys_with(1, 1)
    add_job(200, owner_id=steady)
    with scope() as session:
        for _ in range(5):
            claim(session, 16)  # steady has the workers to itself for a while
    add_job(50, owner_id=returning)
    with scope() as session:
        assert owners_of(claim(session, 16)) == {steady: 8, returning: 8}


def test_the_interactive_lane_goes_first_and_suspects_run_alone(database: str) -> None:
    backlog = add_job(20)
    predict = add_job(1, source=JobSource.PREDICT)
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
    capped = keys_with(1)[0]
    add_job(50, owner_id=capped)
    with scope() as session:
        first = claim_items(session, 8, "v1", worker="w", lease_seconds=60, cap_per_tenant=10)
        second = claim_items(session, 8, "v1", worker="w", lease_seconds=60, cap_per_tenant=10)
    assert (len(first), len(second)) == (8, 2)
