"""Per-request dependencies: the settings, one database session, the storage, the queue.

`create_app` builds the app's resources once from the settings it is given and
keeps them on `app.state`; these dependencies hand them to the routes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from shared.db.session import PoolSize, session_factory
from shared.queue import JobQueue
from shared.settings import Settings
from shared.storage import Storage, open_storage


@dataclass(frozen=True)
class Resources:
    """What one API process holds for its life."""

    settings: Settings
    queue: JobQueue
    storage: Storage

    @classmethod
    def of(cls, settings: Settings) -> Resources:
        # The API sends job messages through the shared queue interface; it never sees a task.
        return cls(
            settings, JobQueue.for_settings(settings), open_storage(settings.resolved_storage_url)
        )


def _resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


def get_settings(request: Request) -> Settings:
    return _resources(request).settings


def get_queue(request: Request) -> JobQueue:
    return _resources(request).queue


def get_storage(request: Request) -> Storage:
    return _resources(request).storage


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    session = session_factory(settings.resolved_database_url, PoolSize.of(settings))()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]
StorageDep = Annotated[Storage, Depends(get_storage)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
