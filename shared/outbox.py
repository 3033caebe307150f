"""The outbox: messages that must follow a commit, gathered on the session and sent after it.

Three kinds of message announce committed state: a job message (this job has
items to classify), a webhook event (this event row is ready to send), and a
job's end (whoever waits on it, a `/predict` call, looks now instead of at its
next poll). Services add
them next to the rows they announce; `unit_of_work.commit` sends them once the
commit succeeded, through the sender its edge opened the session with; a
rollback drops them. A send that fails loses nothing: the workers' reconciler
enqueues every job that still has queued items, and the webhook dispatcher loop
sends every pending event that is due.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)


class Sender(Protocol):
    """What sends the messages (`shared.queue.JobQueue`)."""

    def enqueue(self, job_id: str) -> bool: ...

    def enqueue_webhook(self, event_id: str) -> None: ...

    def announce_finished(self, job_ids: list[str]) -> None: ...


@dataclass
class Messages:
    job_ids: list[str] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    finished_ids: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.job_ids or self.event_ids or self.finished_ids)


class Gathering(Protocol):
    """What holds an outbox: a unit of work (`shared.unit_of_work.UnitOfWork`)."""

    outbox: Messages


def add_job(unit: Gathering, job_id: str) -> None:
    """After the commit, wake a worker for `job_id` (at most one message waits per job)."""
    if job_id not in unit.outbox.job_ids:
        unit.outbox.job_ids.append(job_id)


def add_event(unit: Gathering, event_id: str) -> None:
    """After the commit, hand webhook event `event_id` to the webhook worker."""
    if event_id not in unit.outbox.event_ids:
        unit.outbox.event_ids.append(event_id)


def add_finished(unit: Gathering, job_id: str) -> None:
    """After the commit, say that `job_id` ended (a hint: waiters still poll, slowly)."""
    if job_id not in unit.outbox.finished_ids:
        unit.outbox.finished_ids.append(job_id)


def take(unit: Gathering) -> Messages:
    """The messages gathered so far, removed from the unit of work."""
    messages, unit.outbox = unit.outbox, Messages()
    return messages


def send(messages: Messages, sender: Sender | None) -> list[str]:
    """Send what a commit announced; returns the jobs whose message went out."""
    if sender is None:
        return []
    sent: list[str] = []
    for job_id in messages.job_ids:
        try:
            if sender.enqueue(job_id):
                sent.append(job_id)
        except Exception:
            log.exception("could not enqueue job %s; the reconciler will", job_id)
    for event_id in messages.event_ids:
        try:
            sender.enqueue_webhook(event_id)
        except Exception:
            log.exception("could not enqueue webhook event %s; the dispatcher loop will", event_id)
    if messages.finished_ids:
        try:
            sender.announce_finished(messages.finished_ids)
        except Exception:  # waiters find out at their next slow poll
            log.warning("could not announce %d finished job(s)", len(messages.finished_ids))
    return sent
