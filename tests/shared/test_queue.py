"""At most one waiting message per job, on Redis and on the embedded broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shared.db.models import new_id
from shared.queue import QUEUE, WEBHOOK_QUEUE, JobQueue, make_celery, pending_marks
from shared.queue_marks import RedisMarks
from shared.settings import Settings
from testkit.processes import free_port


def _clear(url: str) -> None:
    """Other tests' workers share this Redis database: leave no message or mark behind."""
    client = redis.Redis.from_url(url)
    client.delete(
        QUEUE,
        WEBHOOK_QUEUE,
        *client.keys(RedisMarks.PREFIX + "*"),
        *client.keys(RedisMarks.ASKED + "*"),
    )


@pytest.fixture(params=["redis", "embedded"])
def queue_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        _clear(url)
        yield Settings(redis_url=url, data_dir=tmp_path)
        _clear(url)
        return
    yield Settings(data_dir=tmp_path)


def _waiting(settings: Settings, queue: str = QUEUE) -> int:
    if settings.redis_url:
        return int(redis.Redis.from_url(settings.redis_url).llen(queue))
    # The embedded broker keeps every queue's messages in one folder.
    return len(list((settings.broker_folder / "queue").glob("*.msg")))


def test_a_job_has_at_most_one_message_waiting(queue_settings: Settings) -> None:
    queue = JobQueue(
        make_celery(queue_settings),
        pending_marks(queue_settings),
        pending_marks(queue_settings, "event"),
    )
    backlog = [new_id() for _ in range(5)]
    for _ in range(4):  # the API's enqueue, then three reconciler passes over the backlog
        for job_id in backlog:
            queue.enqueue(job_id)
    assert _waiting(queue_settings) == len(backlog)

    queue.taken(backlog[0])  # a task took its message and has more to do
    assert queue.enqueue(backlog[0])
    assert not queue.enqueue(backlog[0])
    assert _waiting(queue_settings) == len(backlog) + 1


def test_marks_are_lost_with_the_messages_they_stand_for(redis_url: str, tmp_path: Path) -> None:
    settings = Settings(redis_url=redis_url, data_dir=tmp_path)
    queue = JobQueue(
        make_celery(settings), pending_marks(settings), pending_marks(settings, "event")
    )
    job_id = new_id()
    assert queue.enqueue(job_id)
    client = redis.Redis.from_url(redis_url)
    client.delete(QUEUE, RedisMarks.PREFIX + job_id)  # what a Redis restart without AOF does
    assert queue.enqueue(job_id)  # the reconciler's enqueue goes through again
    assert client.llen(QUEUE) == 1
    _clear(redis_url)


def test_a_webhook_event_has_at_most_one_delivery_message_waiting(
    queue_settings: Settings,
) -> None:
    """The dispatcher looks for due events every second; a slow receiver must not
    make that a flood of duplicate delivery messages."""
    queue = JobQueue(
        make_celery(queue_settings),
        pending_marks(queue_settings),
        pending_marks(queue_settings, "event"),
    )
    events = [f"msg_{new_id()}" for _ in range(3)]
    for _ in range(5):  # five dispatcher passes while the receiver hangs
        for event_id in events:
            queue.enqueue_webhook(event_id)
    assert _waiting(queue_settings, WEBHOOK_QUEUE) == len(events)
    queue.webhook_taken(events[0])  # a delivery task took it: the next retry may be sent
    queue.enqueue_webhook(events[0])
    queue.enqueue_webhook(events[0])
    assert _waiting(queue_settings, WEBHOOK_QUEUE) == len(events) + 1


def test_a_busy_worker_hears_each_ask_for_a_message(redis_url: str, tmp_path: Path) -> None:
    """Every /predict call asks for the lane's message, sent or not: a busy worker
    compares tokens, and reads the database only when one changed."""
    settings = Settings(redis_url=redis_url, data_dir=tmp_path)
    queue = JobQueue(
        make_celery(settings), pending_marks(settings), pending_marks(settings, "event")
    )
    job_id = new_id()
    seen = [queue.asked(job_id)]
    assert queue.enqueue(job_id)
    seen.append(queue.asked(job_id))
    assert not queue.enqueue(job_id)  # a second call while the message waits: heard all the same
    seen.append(queue.asked(job_id))
    queue.taken(job_id)
    assert queue.asked(job_id) == seen[-1]  # taking the message is not an ask
    assert queue.enqueue(job_id)
    seen.append(queue.asked(job_id))
    assert None not in seen
    assert len(set(seen)) == len(seen)  # never back to a token seen before
    _clear(redis_url)


def test_the_folder_broker_cannot_say_while_a_message_waits(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    queue = JobQueue(
        make_celery(settings), pending_marks(settings), pending_marks(settings, "event")
    )
    job_id = new_id()
    nothing = queue.asked(job_id)
    assert nothing is not None  # no message waits: no call came since a task took it
    queue.enqueue(job_id)
    assert queue.asked(job_id) is None  # the worker reads the database instead
    queue.taken(job_id)
    assert queue.asked(job_id) == nothing


def test_marks_that_cannot_be_read_cannot_say(tmp_path: Path) -> None:
    """Redis away: the worker reads the database for itself rather than miss a call."""
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    settings = Settings(redis_url=unreachable, data_dir=tmp_path)
    queue = JobQueue(
        make_celery(settings), pending_marks(settings), pending_marks(settings, "event")
    )
    assert queue.asked(new_id()) is None
