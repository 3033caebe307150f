"""Claims and results: written once, the job's final status, known results reused."""

from __future__ import annotations

from functools import partial

import pytest
from sqlalchemy import select, update

from shared.access.keys import create_key
from shared.db.models import (
    Item,
    ItemStatus,
    JobStatus,
)
from shared.jobs.processing import (
    Claimed,
    begin_pass,
    claim_items,
    record_results,
    reuse_known_results,
)
from shared.jobs.recovery import requeue_stale
from shared.jobs.scheduling import lane_waiting
from shared.unit_of_work import UnitOfWork
from tests.shared.database import (
    SENT,
    add_job,
    claim,
    job_row,
    keys_with,
    lapse,
    results_for,
    rows_read_while,
    scope,
)


def test_results_are_written_once_and_the_job_ends_with_the_right_status(database: str) -> None:
    job_id = add_job(3, failed=1)
    assert job_row(job_id).failed == 1  # the intake's failure counts from the start
    with scope() as session:
        claimed = claim(session, 10, "v1")
    with scope() as session:
        record_results(session, results_for(claimed, fail={"img2.jpg"}), worker="w", inference_ms=5)
    with scope() as session:  # a redelivered task writes the same batch again
        record_results(session, results_for(claimed, label="forest"), worker="w", inference_ms=5)
    job = job_row(job_id)
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
    bad, good = add_job(1), add_job(2)
    for job_id, size, fail in ((bad, 1, {"img0.jpg"}), (good, 2, set())):
        with scope() as session:
            claimed = claim(session, size, "v1")
        assert {c.job_id for c in claimed} == {job_id}
        with scope() as session:
            record_results(session, results_for(claimed, fail=fail), worker="w", inference_ms=1)
    assert job_row(bad).status == JobStatus.FAILED
    assert job_row(bad).error == "no image could be classified: broken"
    assert job_row(good).status == JobStatus.SUCCEEDED
    assert job_row(good).error is None


def test_identical_bytes_reuse_the_stored_result_of_the_same_model_version(database: str) -> None:
    first = add_job(1)
    with scope() as session:
        claimed = claim(session, 1, "v1")
    assert [c.job_id for c in claimed] == [first]
    with scope() as session:
        record_results(session, results_for(claimed, label="glacier"), worker="w", inference_ms=1)

    again, other_model = add_job(2), add_job(1)  # every staged item has sha256 "000…"
    with scope() as session:
        claimed = claim(session, 2, "v1")
        reused, to_run = reuse_known_results(session, claimed, "v1", worker="w")
    assert (len(reused), to_run) == (2, [])
    job = job_row(again)
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
    first = add_job(1, owner_id=owners[0])
    with scope() as session:
        claimed = claim(session, 1, "v1")
        assert [c.job_id for c in claimed] == [first]
        record_results(session, results_for(claimed, label="glacier"), worker="w", inference_ms=1)

    same_owner, other_owner, anonymous = (
        add_job(1, owner_id=owners[0]),
        add_job(1, owner_id=owners[1]),
        add_job(1),
    )  # the same bytes (sha256 "000…") from three callers
    with scope() as session:
        claimed = claim(session, 3, "v1")
        reused, to_run = reuse_known_results(session, claimed, "v1", worker="w")
    assert [c.job_id for c in reused] == [same_owner]
    assert {c.job_id for c in to_run} == {other_owner, anonymous}


def test_a_stalled_worker_writes_nothing_for_items_taken_back(database: str) -> None:
    job_id = add_job(1)
    with scope() as session:
        [item] = claim_items(session, 1, "v1", worker="stalled", lease_seconds=60)
        begin_pass(session, [item.id], "stalled", 60)
    lapse(job_id)  # it stopped beating
    with scope() as session:
        requeue_stale(session, 60, 3)
    with scope() as session:
        [again] = claim_items(session, 1, "v1", worker="live", lease_seconds=60)
    with scope() as session:  # the stalled one wakes up and lands its batch late
        late = results_for([item], label="forest")
        assert record_results(session, late, worker="stalled", inference_ms=1) == set()
        assert record_results(session, results_for([again]), worker="live", inference_ms=1) == {
            item.id
        }
    with scope(write=False) as session:
        assert session.scalars(select(Item.label).where(Item.job_id == job_id)).one() == "sea"


def test_a_claim_and_a_record_read_rows_for_their_batch_not_for_the_queue(
    postgres_database: str,
) -> None:
    # A fresh table has no statistics (nor has any table where autovacuum is off):
    # each statement must still find its rows through an index, not by reading every
    # queued item or recounting a big job at each batch.
    first, second = keys_with(1, 1)
    done = add_job(1500, owner_id=first, same_bytes=False)  # results a claim looks through
    with scope() as session:
        session.execute(
            update(Item)
            .where(Item.job_id == done)
            .values(status=ItemStatus.SUCCEEDED, model_version="v1")
        )
    jobs = [add_job(1500, owner_id=owner, same_bytes=False) for owner in (first, second)]
    for _ in range(3):
        with scope() as session:
            claimed, claim_read = rows_read_while(session, partial(_claim_to_run, session))
        with scope() as session:
            _, record_read = rows_read_while(
                session,
                partial(record_results, session, results_for(claimed), worker="w", inference_ms=5),
            )
        assert len(claimed) == 8
        assert claim_read <= 50
        assert record_read <= 50
    # Counted as they landed, the jobs' counts are what their items say.
    assert sum(job_row(job_id).succeeded for job_id in jobs) == 24


def _claim_to_run(session: UnitOfWork) -> list[Claimed]:
    assert not lane_waiting(session, "v1")  # what a busy worker asks between groups
    return reuse_known_results(session, claim(session, 8), "v1", worker="w")[1]
