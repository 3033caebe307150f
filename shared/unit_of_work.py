"""Commits, in one place: the edge that owns a session ends it here.

One session per request, task or command. Services add and flush, and may say
what must happen once their rows are committed (`after_commit`: delete files
whose rows are gone) or if they are not (`on_rollback`: delete files staged for
rows that never were). The edge — a route, a task body, a CLI command — ends the
session with `commit` or `rollback`:

- `commit` writes the metric increments the transaction gathered
  (`shared.metrics`), commits, runs the after-commit actions, and sends the
  outbox's job messages and webhook events (`shared.outbox`) through
  the sender the session was opened with;
- `rollback` drops all of that and runs the on-rollback actions.

No listener on the Session class does any of it behind the caller's back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from shared import metrics, outbox
from shared.db.session import PoolSize, begin_write, session_factory
from shared.settings import Settings

log = logging.getLogger(__name__)

_SENDER = "outbox_sender"
_AFTER_COMMIT = "after_commit"
_ON_ROLLBACK = "on_rollback"

Action = Callable[[], None]


def open_session(settings: Settings, sender: outbox.Sender | None = None) -> Session:
    """A session on `settings`' database whose outbox goes to `sender` after each commit."""
    session = session_factory(settings.resolved_database_url, PoolSize.of(settings))()
    session.info[_SENDER] = sender
    return session


def after_commit(session: Session, action: Action) -> None:
    session.info.setdefault(_AFTER_COMMIT, []).append(action)


def on_rollback(session: Session, action: Action) -> None:
    session.info.setdefault(_ON_ROLLBACK, []).append(action)


def commit(session: Session) -> list[str]:
    """Commit, then run what follows a commit; returns the jobs whose message was sent."""
    messages = outbox.take(session)
    sender: outbox.Sender | None = session.info.get(_SENDER)
    if messages and sender is None:
        # A programming error, caught before anything is written: the edge opened
        # this session without a sender, so its messages would never go out.
        raise RuntimeError("this unit of work has messages to send but no sender")
    metrics.write_increments(session)
    session.commit()
    session.info.pop(_ON_ROLLBACK, None)
    _run(session.info.pop(_AFTER_COMMIT, []))
    return outbox.send(messages, sender)


def rollback(session: Session) -> None:
    try:
        session.rollback()
    finally:  # even when the connection is gone: staged files must still go
        metrics.discard_increments(session)
        outbox.take(session)
        session.info.pop(_AFTER_COMMIT, None)
        _run(session.info.pop(_ON_ROLLBACK, []))


def close(session: Session) -> None:
    """End the session: what was not committed is rolled back (and its actions run)."""
    try:
        rollback(session)
    finally:
        session.close()


def _run(actions: list[Action]) -> None:
    for action in actions:
        try:
            action()
        except Exception:  # files left behind are swept (ORPHAN_GRACE_SECONDS)
            log.exception("clean-up after the transaction failed; the sweeper will finish it")


@contextmanager
def session_scope(
    settings: Settings, write: bool = True, sender: outbox.Sender | None = None
) -> Iterator[Session]:
    """One unit of work on `settings`' database: committed on success, rolled back on error."""
    session = open_session(settings, sender)
    try:
        if write:
            begin_write(session)
        yield session
        commit(session)
    finally:
        close(session)
