"""Units of work: one transaction and what must follow it, as one typed object.

A `UnitOfWork` is the session a request, task or command works in, plus what
its commit must be followed by: the outbox (`shared.outbox`: job messages,
webhook events, finished jobs), the metric increments (`shared.metrics`), and
the actions to run after a commit (delete files whose rows are gone) or after a
rollback (delete files staged for rows that never were). Services add and
flush, ask for a write transaction with `unit.begin_write()` (the one way to),
and never commit. The edge that opened the unit ends it:

- `commit(unit)` writes the increments, commits, runs the after-commit actions
  and sends the outbox through the sender the unit was opened with;
- `rollback(unit)` drops all of that and runs the on-rollback actions.

Each process builds one `UnitOfWorkFactory` (the API's resources, a worker's
context, a command) and opens every unit from it. No listener on the Session
class does any of this behind the caller's back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from shared import metrics, outbox
from shared.db.session import ConnectionLimits, begin_write, engine_for
from shared.settings import Settings

log = logging.getLogger(__name__)

Action = Callable[[], None]


class UnitOfWork(Session):
    """A session that is one unit of work (opened by `UnitOfWorkFactory`)."""

    def __init__(self, *args: Any, sender: outbox.Sender | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sender = sender
        self.outbox = outbox.Messages()
        self.metric_increments = metrics.new_increments()
        self.after_commit_actions: list[Action] = []
        self.on_rollback_actions: list[Action] = []
        self.sent_jobs: list[str] = []  # the jobs whose message its last commit sent

    def begin_write(self) -> None:
        """Start the transaction as a writer (SQLite: BEGIN IMMEDIATE), before its first
        statement; a unit already writing goes on."""
        begin_write(self)


class UnitOfWorkFactory:
    """Opens this process's units of work on its database, each sending through `sender`."""

    def __init__(self, settings: Settings, sender: outbox.Sender | None = None) -> None:
        engine = engine_for(settings.resolved_database_url, ConnectionLimits.of(settings))
        self._make = sessionmaker(engine, class_=UnitOfWork, expire_on_commit=False)
        self.sender = sender

    def open(self) -> UnitOfWork:
        """A unit the caller ends (`commit`, then `close`)."""
        return self._make(sender=self.sender)

    @contextmanager
    def scope(self, write: bool = True) -> Iterator[UnitOfWork]:
        """One unit of work: committed on success, rolled back on error."""
        unit = self.open()
        try:
            if write:
                unit.begin_write()
            yield unit
            commit(unit)
        finally:
            close(unit)


def after_commit(unit: UnitOfWork, action: Action) -> None:
    unit.after_commit_actions.append(action)


def on_rollback(unit: UnitOfWork, action: Action) -> None:
    unit.on_rollback_actions.append(action)


def commit(unit: UnitOfWork) -> list[str]:
    """Commit, then run what follows a commit; returns the jobs whose message was sent."""
    messages = outbox.take(unit)
    if messages and unit.sender is None:
        # A programming error, caught before anything is written: the edge opened
        # this unit without a sender, so its messages would never go out.
        raise RuntimeError("this unit of work has messages to send but no sender")
    increments, unit.metric_increments = unit.metric_increments, metrics.new_increments()
    metrics.write_increments(unit, increments)
    unit.commit()
    unit.on_rollback_actions = []
    actions, unit.after_commit_actions = unit.after_commit_actions, []
    _run(actions)
    unit.sent_jobs = outbox.send(messages, unit.sender)
    return unit.sent_jobs


def rollback(unit: UnitOfWork) -> None:
    try:
        unit.rollback()
    finally:  # even when the connection is gone: staged files must still go
        metrics.discard_increments(unit)
        outbox.take(unit)
        unit.after_commit_actions = []
        actions, unit.on_rollback_actions = unit.on_rollback_actions, []
        _run(actions)


def close(unit: UnitOfWork) -> None:
    """End the unit: what was not committed is rolled back (and its actions run)."""
    try:
        rollback(unit)
    finally:
        unit.close()


def _run(actions: list[Action]) -> None:
    for action in actions:
        try:
            action()
        except Exception:  # files left behind are swept (ORPHAN_GRACE_SECONDS)
            log.exception("clean-up after the transaction failed; the sweeper will finish it")
