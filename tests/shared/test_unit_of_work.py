"""The unit of work: what follows a commit happens only after it, and only if it commits."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from shared import outbox, unit_of_work
from shared.db.migrate import upgrade
from shared.db.models import Job, JobStatus, new_id, utcnow
from shared.settings import Settings
from shared.unit_of_work import UnitOfWork, UnitOfWorkFactory


class Recorder:
    def __init__(self, seen_by_sender: list[tuple[str, bool]], settings: Settings) -> None:
        self.seen = seen_by_sender
        self.settings = settings

    def enqueue(self, job_id: str) -> bool:
        # What a worker receiving the message would find: the job must be committed.
        with UnitOfWorkFactory(self.settings).scope(write=False) as session:
            self.seen.append((job_id, session.get(Job, job_id) is not None))
        return True

    def enqueue_webhook(self, event_id: str) -> None:
        self.seen.append((event_id, True))

    def announce_finished(self, job_ids: list[str]) -> None:
        self.seen += [(job_id, True) for job_id in job_ids]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'uow.db'}"
    upgrade(url)
    return Settings(database_url=url)


def _add_job(session: UnitOfWork) -> str:
    job_id = new_id()
    session.add(Job(id=job_id, status=JobStatus.QUEUED, created_at=utcnow()))
    session.flush()
    outbox.add_job(session, job_id)
    return job_id


def test_messages_and_actions_follow_the_commit(settings: Settings) -> None:
    seen: list[tuple[str, bool]] = []
    done: list[str] = []
    with UnitOfWorkFactory(settings, sender=Recorder(seen, settings)).scope() as session:
        job_id = _add_job(session)
        unit_of_work.after_commit(session, lambda: done.append("after commit"))
        unit_of_work.on_rollback(session, lambda: done.append("on rollback"))
        assert seen == []  # nothing is sent before the commit
    assert seen == [(job_id, True)]  # sent once, and the job was visible to the receiver
    assert done == ["after commit"]


def test_a_rollback_sends_nothing_and_undoes_what_it_staged(settings: Settings) -> None:
    seen: list[tuple[str, bool]] = []
    done: list[str] = []
    job_ids: list[str] = []

    def fail_midway() -> None:
        with UnitOfWorkFactory(settings, sender=Recorder(seen, settings)).scope() as session:
            job_ids.append(_add_job(session))
            unit_of_work.after_commit(session, lambda: done.append("after commit"))
            unit_of_work.on_rollback(session, lambda: done.append("on rollback"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_midway()
    (job_id,) = job_ids
    assert seen == []
    assert done == ["on rollback"]
    with UnitOfWorkFactory(settings).scope(write=False) as session:
        assert session.scalars(select(Job).where(Job.id == job_id)).all() == []


def test_messages_without_a_sender_fail_before_anything_is_written(settings: Settings) -> None:
    job_ids: list[str] = []

    def commit_without_sender() -> None:
        with UnitOfWorkFactory(settings).scope() as session:
            job_ids.append(_add_job(session))

    with pytest.raises(RuntimeError, match="no sender"):
        commit_without_sender()
    (job_id,) = job_ids
    with UnitOfWorkFactory(settings).scope(write=False) as session:
        assert session.get(Job, job_id) is None
