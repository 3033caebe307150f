"""Per-request dependencies: one database session, the storage, the settings."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Annotated

from fastapi import Depends
from sqlalchemy.orm import Session

from shared.db.session import session_factory
from shared.queue import JobQueue
from shared.settings import Settings, get_settings
from shared.storage import Storage, open_storage


def get_session() -> Iterator[Session]:
    session = session_factory(get_settings().resolved_database_url)()
    try:
        yield session
    finally:
        session.close()


@lru_cache(maxsize=1)
def get_queue() -> JobQueue:
    """The API sends job messages through the shared queue interface; it never sees a task."""
    return JobQueue.for_settings(get_settings())


@lru_cache(maxsize=1)
def get_storage() -> Storage:
    return open_storage(get_settings().resolved_storage_url)


SessionDep = Annotated[Session, Depends(get_session)]
StorageDep = Annotated[Storage, Depends(get_storage)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
