"""Wait for a job to end without holding a thread or a database connection meanwhile.

The worker that ends a job says so (`shared.finished`): the waiting request is
woken at once and looks. Without that word (lost, or Redis away) it still looks
every SLOWEST_LOOK_SECONDS, so the word only ever saves time. Each look is one
short read in the threadpool, whose transaction ends at once, so its connection
goes back to the pool; between looks the request only awaits an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from starlette.concurrency import run_in_threadpool

from shared import unit_of_work
from shared.db.models import Job, JobStatus
from shared.unit_of_work import UnitOfWork

SLOWEST_LOOK_SECONDS = 0.5


class FinishedWaiters:
    """The requests of this API process waiting on jobs, woken when a job ends."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}
        self._lock = threading.Lock()

    def expect(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        with self._lock:
            self._waiting[job_id] = (asyncio.get_running_loop(), event)
        return event

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._waiting.pop(job_id, None)

    def heard(self, job_id: str) -> None:
        """From the listening thread: `job_id` ended."""
        with self._lock:
            waiting = self._waiting.get(job_id)
        if waiting is not None:
            loop, event = waiting
            loop.call_soon_threadsafe(event.set)


def _final_job(session: UnitOfWork, job_id: str) -> Job | None:
    try:
        job = session.get(Job, job_id, populate_existing=True)
        return job if job is not None and JobStatus(job.status).is_final else None
    finally:
        unit_of_work.rollback(session)  # end the read: the connection returns to the pool


async def wait_until_final(
    session: UnitOfWork, job_id: str, timeout_seconds: float, waiters: FinishedWaiters
) -> Job | None:
    """The job once it has ended, or None when `timeout_seconds` pass first."""
    deadline = time.monotonic() + timeout_seconds
    woken = waiters.expect(job_id)
    try:
        while True:
            job = await run_in_threadpool(_final_job, session, job_id)
            if job is not None:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(SLOWEST_LOOK_SECONDS, left))
            woken.clear()
    finally:
        waiters.forget(job_id)
