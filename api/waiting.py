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

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from shared import unit_of_work
from shared.db.models import Item, Job, JobStatus
from shared.unit_of_work import UnitOfWork

# The fallback only: a job's end is normally heard at once. Each look is a transaction
# on a busy database, so a request under load should make one or two, not one a tick.
SLOWEST_LOOK_SECONDS = 1.0


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


def _ended(session: UnitOfWork, job_id: str) -> tuple[Job, Item] | None:
    """The job and its (first) item once the job has ended; one short read."""
    try:
        row = session.execute(
            select(Job, Item)
            .join(Item, Item.job_id == Job.id)
            .where(Job.id == job_id)
            .order_by(Item.position)
            .limit(1)
            .execution_options(populate_existing=True)
        ).first()
        if row is None or not JobStatus(row[0].status).is_final:
            return None
        job, item = row
        # Detached, the rollback below leaves what was read in place: the route reads
        # the answer from them with no second and third query.
        session.expunge(job)
        session.expunge(item)
        return job, item
    finally:
        unit_of_work.rollback(session)  # end the read: the connection returns to the pool


async def wait_until_final(
    session: UnitOfWork, job_id: str, timeout_seconds: float, woken: asyncio.Event
) -> tuple[Job, Item] | None:
    """The job and its item once it has ended, or None when `timeout_seconds` pass first.

    `woken` was expected (`FinishedWaiters.expect`) before the job was committed, so
    no word of its end can come before it: the first look waits for the word (or for
    SLOWEST_LOOK_SECONDS) instead of reading a job that cannot have ended yet.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        left = deadline - time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken.wait(), max(min(SLOWEST_LOOK_SECONDS, left), 0))
        woken.clear()
        ended = await run_in_threadpool(_ended, session, job_id)
        if ended is not None:
            return ended
        if deadline - time.monotonic() <= 0:
            return None
