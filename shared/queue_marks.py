"""Marks of the jobs that have a message waiting, kept beside the broker's own messages.

At most one message per job (and one per webhook event) waits in the queue: an
enqueue sends only when it sets the job's mark, and the task clears the mark as
it starts. The marks live where the messages do (the same Redis, or the broker's
folder), so whatever loses the messages (a Redis restart without persistence)
loses their marks too, and the reconciler's next enqueue goes through. A mark
also expires after `ttl_seconds`, in case a process died between setting it and
sending.

A busy worker also wants to know whether a job's message was asked for again
while it waited (the interactive lane's is asked for by every /predict call):
`asked` gives a token that changes with every ask, so the worker reads the
database only when something new came. Redis counts the asks; the folder cannot
say (`None`) while a mark is set, and the worker then reads the database.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Protocol

import redis


class PendingMarks(Protocol):
    def set(self, job_id: str) -> bool:
        """Mark the job; False when it was marked already (a message is waiting)."""

    def clear(self, job_id: str) -> None: ...

    def asked(self, job_id: str) -> str | None:
        """A token that changes whenever the job's message is asked for; None: cannot say."""


class RedisMarks:
    PREFIX = "intel:pending:"
    ASKED = "intel:asked:"

    def __init__(self, url: str, ttl_seconds: float, kind: str = "") -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=5)
        self.ttl = max(int(ttl_seconds), 1)
        self.prefix = self.PREFIX + (f"{kind}:" if kind else "")
        self.asked_prefix = self.ASKED + (f"{kind}:" if kind else "")

    def set(self, job_id: str) -> bool:
        # One round trip: the mark, and the count of asks (kept when the mark is
        # cleared, so a count never comes back to a value a worker saw before).
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.prefix + job_id, 1, nx=True, ex=self.ttl)
        pipe.incr(self.asked_prefix + job_id)
        pipe.expire(self.asked_prefix + job_id, self.ttl)
        marked, _, _ = pipe.execute()
        return bool(marked)

    def clear(self, job_id: str) -> None:
        self.client.delete(self.prefix + job_id)

    def asked(self, job_id: str) -> str | None:
        count = self.client.get(self.asked_prefix + job_id)
        return count.decode() if isinstance(count, bytes) else ""


class FolderMarks:
    def __init__(self, folder: Path, ttl_seconds: float) -> None:
        self.folder = folder
        self.ttl = ttl_seconds
        folder.mkdir(parents=True, exist_ok=True)

    def set(self, job_id: str) -> bool:
        path = self.folder / job_id
        try:
            if time.time() - path.stat().st_mtime > self.ttl:
                path.unlink(missing_ok=True)  # expired
        except FileNotFoundError:
            pass
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return False
        return True

    def clear(self, job_id: str) -> None:
        (self.folder / job_id).unlink(missing_ok=True)

    def asked(self, job_id: str) -> str | None:
        # Asks are not counted here: with no message waiting, none came since the last
        # task took it; with one waiting, the caller must look for itself.
        return None if (self.folder / job_id).exists() else ""
