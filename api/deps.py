"""Per-request dependencies: the settings, one unit of work, the storage, the queue.

`create_app` builds the app's resources once from the settings it is given and
keeps them on `app.state`; these dependencies hand them to the routes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from api.waiting import FinishedWaiters
from shared import unit_of_work
from shared.queue import JobQueue
from shared.settings import Settings
from shared.storage import Storage, open_storage
from shared.unit_of_work import UnitOfWork, UnitOfWorkFactory


@dataclass(frozen=True)
class Resources:
    """What one API process holds for its life."""

    settings: Settings
    queue: JobQueue
    units: UnitOfWorkFactory  # every unit of work of this process, sending through `queue`
    storage: Storage
    waiters: FinishedWaiters

    @classmethod
    def of(cls, settings: Settings) -> Resources:
        # The API sends job messages through the shared queue interface; it never sees a task.
        queue = JobQueue.for_settings(settings)
        return cls(
            settings,
            queue,
            UnitOfWorkFactory(settings, sender=queue),
            open_storage(settings.resolved_storage_url),
            FinishedWaiters(),
        )


# The dependencies that only hand over what the app holds are `async def`: FastAPI
# runs a plain `def` dependency in its threadpool, a hop there and back (about
# 65 us of CPU each) for a field read. Only the unit of work, whose close may talk
# to the database, stays in the threadpool.


def _resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


async def get_settings(request: Request) -> Settings:
    return _resources(request).settings


async def get_storage(request: Request) -> Storage:
    return _resources(request).storage


async def get_waiters(request: Request) -> FinishedWaiters:
    return _resources(request).waiters


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_units(request: Request) -> UnitOfWorkFactory:
    return _resources(request).units


def get_session(request: Request) -> Iterator[UnitOfWork]:
    """The request's unit of work: a route that writes commits it once (`unit_of_work.commit`);
    whatever is left uncommitted when the request ends is rolled back, with its clean-up."""
    unit = _resources(request).units.open()
    try:
        yield unit
    finally:
        unit_of_work.close(unit)


# Ended when the route returns, before the response goes out: a client that reads
# its response slowly (or never) holds no transaction and no connection.
SessionDep = Annotated[UnitOfWork, Depends(get_session, scope="function")]
UnitsDep = Annotated[UnitOfWorkFactory, Depends(get_units)]
StorageDep = Annotated[Storage, Depends(get_storage)]
WaitersDep = Annotated[FinishedWaiters, Depends(get_waiters)]
