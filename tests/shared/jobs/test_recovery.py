"""Attempts: only items in a pass are charged; what a dead or stopping worker held goes back."""

from __future__ import annotations

from sqlalchemy import select

from shared.db.models import (
    Item,
    JobSource,
    JobStatus,
)
from shared.jobs.processing import (
    begin_pass,
    claim_items,
    record_results,
)
from shared.jobs.records import cancel_job
from shared.jobs.recovery import release, requeue_stale
from tests.shared.database import (
    add_job,
    attempts_of,
    claim,
    extend_leases_of,
    job_row,
    lapse,
    results_for,
    scope,
)


def test_only_items_in_a_pass_are_charged_when_their_worker_dies(database: str) -> None:
    job_id = add_job(4)
    with scope() as session:
        claimed = claim(session, 4)
        begin_pass(session, [c.id for c in claimed[:2]], "w", 60)  # two entered decoding
    with scope() as session:
        assert requeue_stale(session, 60, 3) == []  # leases still running
    assert extend_leases_of("w") == 4
    lapse(job_id)
    with scope() as session:
        assert requeue_stale(session, 60, 3) == [job_id]
    assert attempts_of(job_id) == [
        ("img0.jpg", "queued", 1, True),  # suspects: charged, and run alone next
        ("img1.jpg", "queued", 1, True),
        ("img2.jpg", "queued", 0, False),  # merely claimed: back as they were
        ("img3.jpg", "queued", 0, False),
    ]


def test_a_task_that_ends_early_releases_what_it_holds(database: str) -> None:
    job_id = add_job(3)
    with scope() as session:
        claimed = claim(session, 3)
        begin_pass(session, [claimed[0].id], "w", 60)
    with scope() as session:
        assert release(session, [c.id for c in claimed], "someone else", 3) == []
        assert release(session, [c.id for c in claimed], "w", 3) == [job_id]
    assert [(a[1], a[2], a[3]) for a in attempts_of(job_id)] == [
        ("queued", 1, True),
        ("queued", 0, False),
        ("queued", 0, False),
    ]


def test_a_cancelled_item_claimed_ahead_is_neither_charged_nor_run(database: str) -> None:
    job_id, other = add_job(2), add_job(1)
    with scope() as session:
        claimed = claim(session, 3)
    with scope() as session:
        cancel_job(session, job_id, None)
    with scope() as session:
        to_run = begin_pass(session, [c.id for c in claimed], "w", 60)
    assert to_run == {c.id for c in claimed if c.job_id == other}
    assert [a[2] for a in attempts_of(job_id)] == [0, 0]


def test_an_item_that_kills_its_workers_alone_fails_alone(database: str) -> None:
    poison = add_job(1)
    healthy = add_job(3)
    with scope() as session:
        claimed = claim(session, 4)
        begin_pass(session, [c.id for c in claimed], "w", 60)
    lapse(poison)
    lapse(healthy)
    with scope() as session:
        requeue_stale(session, 60, 3)
    # Each suspect now runs alone: the healthy ones succeed, the poison kills again.
    for _ in range(4):
        with scope() as session:
            [alone] = claim(session, 4)
            begin_pass(session, [alone.id], "w", 60)
        if alone.job_id == healthy:
            with scope() as session:
                record_results(session, results_for([alone]), worker="w", inference_ms=1)
    assert [a[2] for a in attempts_of(healthy)] == [1 + 1] * 3  # once in the batch, once alone
    lapse(poison)
    with scope() as session:
        assert requeue_stale(session, 60, 3) == [poison]
    with scope() as session:
        [alone] = claim(session, 4)
        begin_pass(session, [alone.id], "w", 60)
    assert alone.job_id == poison
    lapse(poison)
    with scope() as session:
        assert requeue_stale(session, 60, 3) == []
    with scope(write=False) as session:
        item = session.scalars(select(Item).where(Item.job_id == poison)).one()
    assert item.status == "failed"
    assert item.error is not None
    assert "abandoned after 3 attempts (MAX_ITEM_ATTEMPTS)" in item.error
    assert (job_row(poison).status, job_row(poison).failed) == (JobStatus.FAILED, 1)
    assert job_row(healthy).status == JobStatus.SUCCEEDED


def test_a_lane_claim_is_its_charge_and_its_item_runs_alone_if_its_worker_dies(
    database: str,
) -> None:
    predict = add_job(1, source=JobSource.PREDICT)
    batch = add_job(2)
    with scope() as session:
        lane = claim_items(
            session, 4, "v1", worker="w", lease_seconds=60, lane_only=True, into_pass=True
        )
        rest = claim(session, 4)
    assert [c.job_id for c in lane] == [predict]  # the lane takes /predict items only
    assert {c.job_id for c in rest} == {batch}
    assert attempts_of(predict) == [("img0.jpg", "running", 1, False)]  # charged at once
    assert [a[2] for a in attempts_of(batch)] == [0, 0]  # merely claimed
    lapse(predict)
    lapse(batch)
    with scope() as session:
        requeue_stale(session, 60, 3)
    assert attempts_of(predict) == [("img0.jpg", "queued", 1, True)]  # a suspect
    assert attempts_of(batch) == [
        ("img0.jpg", "queued", 0, False),
        ("img1.jpg", "queued", 0, False),
    ]
