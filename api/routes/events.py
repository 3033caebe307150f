"""GET /jobs/{id}/events: a job's progress as Server-Sent Events, then its final document.

Each event's data is the job document (`GET /jobs/{id}`): `progress` events
while it runs (id: the number of items done, sent whenever it grows), then one
`done` event (id `final`) when it ends, and the stream closes. A client that
reconnects with `Last-Event-ID` gets nothing it already had. The stream reads the
database in short transactions between sleeps and holds no connection while it
waits or while a client reads slowly; a comment line every 15 s keeps proxies
from closing a quiet stream, and a stream ends after an hour (reconnect with
Last-Event-ID to go on). One API process serves at most MAX_OPEN_STREAMS at
once; past that, `503` says to poll instead.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Header
from fastapi.responses import StreamingResponse

from api.auth import CallerDep
from api.deps import UnitsDep
from api.errors import DATABASE_ERRORS, ERROR_RESPONSES
from shared.db.models import JobStatus
from shared.errors import NotFound, ServiceUnavailable
from shared.jobs import records as job_service
from shared.jobs.documents import job_document
from shared.unit_of_work import UnitOfWorkFactory

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=ERROR_RESPONSES)

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
MAX_STREAM_SECONDS = 3600.0
FINAL_ID = "final"
# Open streams one API process serves at once: each looks at the database twice a
# second, so a client opening thousands cannot turn them into a load on everyone.
MAX_OPEN_STREAMS = 256
_open_streams = 0


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "the event stream"}},
)
async def job_events(
    job_id: str,
    units: UnitsDep,
    caller: CallerDep,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", description="Resume after this event")
    ] = None,
) -> StreamingResponse:
    """`progress` events (the job document) while the job runs, then `done`; then it ends."""
    if _open_streams >= MAX_OPEN_STREAMS:
        raise ServiceUnavailable(
            f"this API process already serves {MAX_OPEN_STREAMS} event streams; poll "
            f"GET /jobs/{job_id} or try again shortly"
        )
    # Read once here, so a missing job is a 404 before the stream's 200 goes out.
    first = await anyio.to_thread.run_sync(_document, units, job_id, caller.owner)
    return StreamingResponse(
        _counted(_watch(units, job_id, caller.owner, first, _seen(last_event_id))),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _document(units: UnitOfWorkFactory, job_id: str, owner: str | None) -> dict[str, Any]:
    with units.scope(write=False) as unit:
        return job_document(unit, job_service.get_job(unit, job_id, owner))


def _seen(last_event_id: str | None) -> int:
    """Items done as of the client's last event (-1: it has none)."""
    if last_event_id is not None and last_event_id.strip().isdigit():
        return int(last_event_id.strip())
    return -1


async def _counted(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """`events`, counted among this process's open streams while it lasts."""
    global _open_streams
    _open_streams += 1
    try:
        async for event in events:
            yield event
    finally:
        _open_streams -= 1


async def _watch(
    units: UnitOfWorkFactory,
    job_id: str,
    owner: str | None,
    document: dict[str, Any],
    seen: int,
) -> AsyncIterator[str]:
    opened = last_sent = time.monotonic()
    while True:
        if JobStatus(document["status"]).is_final:
            yield _event("done", FINAL_ID, document)
            return
        done = document["succeeded"] + document["failed"] + document["skipped"]
        if done > seen or seen < 0:
            yield _event("progress", str(done), document)
            seen, last_sent = done, time.monotonic()
        elif time.monotonic() - last_sent > KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        if time.monotonic() - opened > MAX_STREAM_SECONDS:
            return
        await anyio.sleep(POLL_SECONDS)
        try:
            document = await anyio.to_thread.run_sync(_document, units, job_id, owner)
        except NotFound as exc:  # deleted while watched
            yield _event("error", FINAL_ID, {"error": {"code": exc.code, "message": exc.message}})
            return
        except DATABASE_ERRORS:
            continue  # the database is away for a moment: look again after the next sleep


def _event(name: str, event_id: str, data: dict[str, Any]) -> str:
    return f"event: {name}\nid: {event_id}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
