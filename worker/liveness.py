"""Whether this worker makes progress, not merely whether a thread of it still runs.

The work loop says, at each step, by when it expects the next one (`expect`);
the heartbeat thread beats, and extends the leases the worker holds, only while
that promise holds (`making_progress`). A forward pass stuck past its deadline,
a decode that hangs the loop, or a stopped Celery main process (which then
delivers nothing) stops the beat: `/readyz` turns 503 within
WORKER_STALE_SECONDS, the supervisor restarts the worker, and the items it held
are taken back when their leases run out.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from multiprocessing.sharedctypes import Synchronized

# CLOCK_MONOTONIC is one clock for every process of the host: the main process
# writes its time here, the pool child (forked after) reads it.
_main_seen: Synchronized[float] = multiprocessing.Value("d", 0.0)
# Set by the Celery main process when a warm shutdown begins (SIGTERM: a deploy, a
# scale-in); its pool child, forked after, reads it and claims no more work.
_stopping: Synchronized[int] = multiprocessing.Value("b", 0)
MAIN_BEAT_SECONDS = 1.0
# The main process is stopped (or hung) once it has not beaten for this long.
MAIN_STALE_SECONDS = 3.0


class Liveness:
    def __init__(self) -> None:
        self._due: float | None = None  # by when the next step must come; None: idle
        self._lock = threading.Lock()

    def expect(self, seconds: float) -> None:
        """The next step comes within `seconds`, or the worker counts as stalled."""
        with self._lock:
            self._due = time.monotonic() + seconds

    def idle(self) -> None:
        """Waiting for work: no step is owed."""
        with self._lock:
            self._due = None

    def making_progress(self) -> bool:
        """Each step met its deadline, and the Celery main process runs."""
        with self._lock:
            due = self._due
        if due is not None and time.monotonic() > due:
            return False
        return main_alive()


liveness = Liveness()


def main_alive() -> bool:
    """The Celery main process beat lately (or this process is not a pool child of one).

    A pool child whose main process is stopped takes no more work: nothing it
    finished could be acknowledged, and its leases lapse anyway.
    """
    seen = _main_seen.value
    return seen == 0.0 or time.monotonic() - seen <= MAIN_STALE_SECONDS


def taking_work() -> bool:
    """Whether a pool child may claim more: its main process runs, and no warm shutdown
    (SIGTERM) has begun. Either way, what it holds still finishes."""
    return main_alive() and not _stopping.value


def begin_stopping() -> None:
    """In the Celery main process, as its warm shutdown begins."""
    _stopping.value = 1


def start_main_beat() -> None:
    """In the Celery main process: note every second that it runs (for its pool child)."""

    def beat() -> None:
        while True:
            _main_seen.value = time.monotonic()
            time.sleep(MAIN_BEAT_SECONDS)

    _main_seen.value = time.monotonic()
    threading.Thread(target=beat, name="main-beat", daemon=True).start()
