"""Cancelling a job."""

from __future__ import annotations

import pytest

from shared.db.models import (
    JobStatus,
)
from shared.errors import Conflict
from shared.jobs.processing import (
    record_results,
)
from shared.jobs.records import cancel_job
from shared.jobs.recovery import requeue_stale
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
