"""Cancelling a job."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from shared.db.models import (
    JobStatus,
)
from shared.errors import Conflict
from shared.jobs.processing import (
    count_finished_items,
    record_results,
    settle_jobs,
    write_item_results,
)
from shared.jobs.records import cancel_job
from shared.jobs.recovery import requeue_stale
from testkit.processes import wait_for
from tests.shared.database import (
    add_job,
    claim,
    job_row,
    results_for,
    scope,
)


def test_cancel_ends_queued_and_running_items_and_keeps_finished_ones(database: str) -> None:
    job_id = add_job(6)
    with scope() as session:
        done = claim(session, 1, "v1")
    with scope() as session:
        record_results(session, results_for(done), worker="w", inference_ms=1)
    with scope() as session:
        running = claim(session, 2, "v1")
    with scope() as session:
        cancel_job(session, job_id, None)
    with scope() as session:  # the batch in flight lands after the cancel: dropped
        record_results(session, results_for(running), worker="w", inference_ms=1)
    with scope() as session:
        assert requeue_stale(session, 0, 3) == []  # nothing of a cancelled job comes back
    job = job_row(job_id)
    assert (job.status, job.succeeded, job.skipped) == (JobStatus.CANCELLED, 1, 5)
    with scope() as session, pytest.raises(Conflict, match="already finished"):
        cancel_job(session, job_id, None)


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
def test_a_cancel_beside_a_landing_batch_waits_for_it_instead_of_deadlocking(
    database: str,
) -> None:
    """A batch locks its items, then their job; a cancel arriving in between must
    take the same order, or Postgres breaks the deadlock by failing one of them."""
    job_id = add_job(4)
    with scope() as session:
        running = claim(session, 2, "v1")
    results = results_for(running)
    cancel_errors: list[BaseException] = []

    def cancel() -> None:
        try:
            with scope() as session:
                cancel_job(session, job_id, None)
        except BaseException as error:  # reported by the assertion below
            cancel_errors.append(error)

    with scope() as batch:
        written = write_item_results(batch, results, 1.0, None, "w")  # the items' locks
        canceller = threading.Thread(target=cancel)
        canceller.start()
        wait_for(_a_session_waits_on_a_lock, 30, "the cancel to wait on the batch's locks")
        count_finished_items(batch, written)
        settle_jobs(batch, written, 10.0)  # the job's lock
    canceller.join(30)
    assert cancel_errors == []
    job = job_row(job_id)
    assert (job.status, job.succeeded, job.skipped) == (JobStatus.CANCELLED, 2, 2)


def _a_session_waits_on_a_lock() -> bool:
    with scope(write=False) as observer:
        waiting = observer.scalar(
            text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
        )
    return bool(waiting)
