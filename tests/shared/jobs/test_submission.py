"""Submission on its own: files stored first, rows and message only with the commit."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import func, select

from shared.db.migrate import upgrade
from shared.db.models import Item, Job
from shared.errors import InvalidInput
from shared.jobs.intake import Upload
from shared.jobs.submission import submit_job
from shared.settings import Settings
from shared.storage import LocalStorage
from shared.unit_of_work import UnitOfWorkFactory
from tests.conftest import image_bytes, zip_bytes


class Sent:
    """A sender that records what the outbox sends after each commit."""

    def __init__(self) -> None:
        self.jobs: list[str] = []

    def enqueue(self, job_id: str) -> bool:
        self.jobs.append(job_id)
        return True

    def enqueue_webhook(self, event_id: str) -> None:
        raise AssertionError("no webhook events here")

    def announce_finished(self, job_ids: list[str]) -> None:
        raise AssertionError("no job ends here")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'submit.db'}"
    upgrade(url)
    return Settings(database_url=url, data_dir=tmp_path)


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "uploads")


def photos() -> list[Upload]:
    archive = zip_bytes({"a.png": image_bytes(), "b.jpg": image_bytes(fmt="JPEG")})
    return [Upload("photos.zip", io.BytesIO(archive))]


def files_of(storage: LocalStorage) -> list[Path]:
    return sorted(p for p in storage.root.rglob("*") if p.is_file())


def test_the_job_and_its_message_come_with_the_commit(
    settings: Settings, storage: LocalStorage
) -> None:
    sent = Sent()
    with UnitOfWorkFactory(settings, sender=sent).scope(write=False) as session:
        submission = submit_job(session, storage, settings, photos(), metadata={"batch": 7})
        assert sent.jobs == []  # nothing goes out before the commit
        job_id = submission.job.id
    assert sent.jobs == [job_id]
    assert len(files_of(storage)) == 2
    with UnitOfWorkFactory(settings).scope(write=False) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.total, job.client_metadata) == (2, {"batch": 7})
        items = session.scalar(select(func.count()).where(Item.job_id == job_id))
        assert items == 2


def test_a_submission_that_does_not_commit_leaves_no_files_and_sends_nothing(
    settings: Settings, storage: LocalStorage
) -> None:
    sent = Sent()
    stored_before_the_end: list[int] = []

    def submit_then_fail() -> None:
        with UnitOfWorkFactory(settings, sender=sent).scope(write=False) as session:
            submit_job(session, storage, settings, photos())
            stored_before_the_end.append(len(files_of(storage)))
            raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="client went away"):
        submit_then_fail()
    assert stored_before_the_end == [2]
    assert files_of(storage) == []
    assert sent.jobs == []


def test_an_idempotent_replay_answers_with_the_first_job_and_keeps_no_second_copy(
    settings: Settings, storage: LocalStorage
) -> None:
    answers = []
    for _ in range(2):
        with UnitOfWorkFactory(settings, sender=Sent()).scope(write=False) as session:
            submission = submit_job(
                session, storage, settings, photos(), idempotency_key="k-1", owner_id=None
            )
            answers.append((submission.job.id, submission.replayed))
    (first, replayed_first), (second, replayed_second) = answers
    assert first == second
    assert (replayed_first, replayed_second) == (False, True)
    assert len(files_of(storage)) == 2  # the replay's own upload was removed


def test_fields_are_checked_before_anything_is_stored(
    settings: Settings, storage: LocalStorage
) -> None:
    with (
        UnitOfWorkFactory(settings, sender=Sent()).scope(write=False) as session,
        pytest.raises(InvalidInput, match=r"unknown webhook_events job\.finished"),
    ):
        submit_job(session, storage, settings, photos(), webhook_events=["job.finished"])
    assert files_of(storage) == []
