"""Marks of the jobs that have a message waiting, kept beside the broker's own messages.

At most one message per job (and one per webhook event) waits in the queue: an
enqueue sends only when it sets the job's mark, and the task clears the mark as
it starts. The marks live where the messages do (the same Redis, or the broker's
folder), so whatever loses the messages (a Redis restart without persistence)
loses their marks too, and the reconciler's next enqueue goes through. A mark
also expires after `ttl_seconds`, in case a process died between setting it and
sending.
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


class RedisMarks:
    PREFIX = "intel:pending:"

    def __init__(self, url: str, ttl_seconds: float, kind: str = "") -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=5)
        self.ttl = max(int(ttl_seconds), 1)
        self.prefix = self.PREFIX + (f"{kind}:" if kind else "")

    def set(self, job_id: str) -> bool:
        return bool(self.client.set(self.prefix + job_id, 1, nx=True, ex=self.ttl))

    def clear(self, job_id: str) -> None:
        self.client.delete(self.prefix + job_id)


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
