"""Commits, in one place: what gathers on a session is written, then sent, around its commit.

Services add and flush; the edge that owns a session (a request, a task, a
command) ends it with `commit` or `rollback` here. `commit` writes the metric
increments the transaction gathered (`shared.metrics`), commits, and then
enqueues the webhook events it committed (the outbox, `shared.webhooks.events`):
no listener on the Session class does either behind the caller's back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from shared import metrics
from shared.db.session import PoolSize, begin_write, session_factory
from shared.settings import Settings
from shared.webhooks import events


def commit(session: Session) -> None:
    metrics.write_increments(session)
    session.commit()
    events.dispatch_pending(session)


def rollback(session: Session) -> None:
    session.rollback()
    metrics.discard_increments(session)
    events.discard_pending(session)


@contextmanager
def session_scope(settings: Settings, write: bool = True) -> Iterator[Session]:
    """One unit of work on `settings`' database: committed on success, rolled back on error."""
    session = session_factory(settings.resolved_database_url, PoolSize.of(settings))()
    if write:
        begin_write(session)
    try:
        yield session
        commit(session)
    except BaseException:
        rollback(session)
        raise
    finally:
        session.close()
