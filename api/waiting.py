"""Wait for a job to end without holding a thread or a database connection meanwhile.

Each look is one short read in the threadpool, whose transaction ends at once,
so its connection goes back to the pool; between looks the request only awaits
a timer. Looks start every 20 ms and back off to 250 ms.
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from shared.db.models import Job, JobStatus
from shared.services import unit_of_work

FIRST_LOOK_SECONDS = 0.02
SLOWEST_LOOK_SECONDS = 0.25


def _final_job(session: Session, job_id: str) -> Job | None:
    try:
        job = session.get(Job, job_id, populate_existing=True)
        return job if job is not None and JobStatus(job.status).is_final else None
    finally:
        unit_of_work.rollback(session)  # end the read: the connection returns to the pool


async def wait_until_final(session: Session, job_id: str, timeout_seconds: float) -> Job | None:
    """The job once it has ended, or None when `timeout_seconds` pass first."""
    deadline = time.monotonic() + timeout_seconds
    pause = FIRST_LOOK_SECONDS
    while True:
        job = await run_in_threadpool(_final_job, session, job_id)
        if job is not None:
            return job
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 1.5, SLOWEST_LOOK_SECONDS)
