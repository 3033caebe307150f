"""Word that a job ended reaches the listening API process, over Redis and on one host."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from shared.finished import FinishedAnnouncer, listen
from shared.settings import Settings
from testkit.processes import wait_for


@pytest.fixture(params=["redis", "embedded"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "redis":
        return Settings(redis_url=request.getfixturevalue("redis_url"), data_dir=tmp_path)
    return Settings(data_dir=tmp_path)


def test_an_announced_end_is_heard(settings: Settings) -> None:
    heard: list[str] = []
    lock = threading.Lock()

    def note(job_id: str) -> None:
        with lock:
            heard.append(job_id)

    listen(settings, note)
    announcer = FinishedAnnouncer(settings)

    def delivered() -> bool:
        # The listener subscribes from its own thread: say it until it is heard.
        announcer.announce(["job-1", "job-2"])
        with lock:
            return {"job-1", "job-2"} <= set(heard)

    wait_for(delivered, 10, "the word to arrive", 0.05)
