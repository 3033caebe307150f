"""/jobs: submit, poll, list, page through results, cancel, delete."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Header, Query, Response, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import AwareDatetime

from api.auth import CallerDep
from api.deps import SessionDep, SettingsDep, StorageDep, UnitsDep
from api.errors import ERROR_RESPONSES
from api.forms import JsonJob, job_fields, job_references, job_uploads, json_job, model_name
from api.schemas import ErrorResponse, ItemOut, JobList, JobOut, ResultsPage
from shared import unit_of_work
from shared.classifier.labels import CLASSES
from shared.db.models import ItemStatus, Job, JobSource, JobStatus
from shared.jobs import records as job_service
from shared.jobs.documents import job_document, job_documents
from shared.jobs.retry import retry_failed
from shared.jobs.submission import submit_job
from shared.unit_of_work import UnitOfWork, UnitOfWorkFactory

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=ERROR_RESPONSES)

# Rows a download reads in one short transaction.
DOWNLOAD_PAGE_ROWS = 500
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


Label = StrEnum("Label", {name: name for name in CLASSES})  # type: ignore[misc]


class ResultFormat(StrEnum):
    JSON = "json"
    CSV = "csv"
    JSONL = "jsonl"


def job_out(session: SessionDep, job: Job) -> JobOut:
    return JobOut.model_validate(job_document(session, job))


JSON_JOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "source": {"type": "string", "description": "s3://bucket/prefix/: every object under it"},
        "inputs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["url"],
                "additionalProperties": False,
                "properties": {
                    "url": {"type": "string", "description": "http(s)://… or s3://bucket/key"},
                    "custom_id": {"type": "string", "description": "Unique in the job"},
                },
            },
        },
        "webhook_url": {"type": "string"},
        "webhook_events": {"type": "array", "items": {"type": "string"}},
        "metadata": {"type": "object"},
        "model": {"type": "string"},
    },
}


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": JSON_JOB_SCHEMA}}}},
    responses={
        409: {"model": ErrorResponse, "description": "Idempotency-Key reused for another request"},
        429: {"model": ErrorResponse, "description": "Over the key's job rate; see Retry-After"},
    },
)
def create(
    response: Response,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    caller: CallerDep,
    json_body: Annotated[JsonJob | None, Depends(json_job)],
    file: Annotated[UploadFile | None, File(description="One image or one .zip")] = None,
    files: Annotated[list[UploadFile] | None, File(description="More images or zips")] = None,
    manifest: Annotated[
        UploadFile | None,
        File(description='Inputs by reference, JSONL: {"custom_id": ..., "url": ...} a line'),
    ] = None,
    webhook_url: Annotated[str | None, Form(description="Called when the job ends")] = None,
    webhook_events: Annotated[
        str | None, Form(description="Also send: job.started, job.progress (comma-separated)")
    ] = None,
    metadata: Annotated[str | None, Form(description="A JSON object kept with the job")] = None,
    model: Annotated[
        str | None,
        Form(description="Run on this model version (GET /models); default: the one new jobs get"),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Retry safely: the same key and request return the first job (24 h+)",
        ),
    ] = None,
) -> JobOut:
    """Upload one image, a zip of images, or several; or name inputs by reference (a JSON
    body, or a JSONL `manifest`) for workers to fetch. Classification runs in the background."""
    if json_body is not None:
        webhook_url, webhook_events = json_body.webhook_url, json_body.webhook_events
        metadata, model = json_body.metadata, json_body.model
    fields = job_fields(
        settings.max_form_field_bytes,
        webhook_url=webhook_url,
        webhook_events=webhook_events,
        metadata=metadata,
    )
    references = job_references(json_body, manifest, bool(file or files), settings)
    submission = submit_job(
        session,
        storage,
        settings,
        [] if references is not None else job_uploads(file, files),
        owner_id=caller.key_id,
        idempotency_key=idempotency_key,
        webhook_url=fields.webhook_url,
        webhook_events=fields.webhook_events,
        metadata=fields.metadata,
        model=model_name(model),
        references=references,
    )
    unit_of_work.commit(session)
    response.headers["Location"] = f"/jobs/{submission.job.id}"
    if submission.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return job_out(session, submission.job)


@router.get("", response_model=JobList)
def list_jobs(
    session: SessionDep,
    caller: CallerDep,
    status: JobStatus | None = None,
    source: Annotated[
        JobSource | None, Query(description="Only jobs made by POST /jobs, or by POST /predict")
    ] = None,
    created_after: Annotated[
        AwareDatetime | None, Query(description="Only jobs created at or after this instant")
    ] = None,
    created_before: Annotated[
        AwareDatetime | None, Query(description="Only jobs created before this instant")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> JobList:
    """The caller's jobs, newest first, with how many match the filters in all."""
    which = job_service.JobFilter(caller.owner, status, source, created_after, created_before)
    page = job_service.list_jobs(session, which, limit=limit, cursor=cursor)
    return JobList(
        items=[JobOut.model_validate(document) for document in job_documents(session, page.rows)],
        next_cursor=page.next_cursor,
        total=job_service.count_jobs(session, which),
    )


@router.get("/{job_id}", response_model=JobOut)
def get(job_id: str, session: SessionDep, caller: CallerDep) -> JobOut:
    return job_out(session, job_service.get_job(session, job_id, caller.owner))


@router.get(
    "/{job_id}/results",
    response_model=ResultsPage,
    response_model_by_alias=True,
    responses={200: {"content": {"text/csv": {}, "application/x-ndjson": {}}}},
)
def results(
    job_id: str,
    session: SessionDep,
    units: UnitsDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
    format: ResultFormat = ResultFormat.JSON,
    status: Annotated[
        ItemStatus | None, Query(description="Only items with this status (`failed`, …)")
    ] = None,
    label: Annotated[Label | None, Query(alias="class", description="Only this class")] = None,
) -> ResultsPage | StreamingResponse:
    """A page of items, or with `format=csv`/`jsonl` every item as one download; either
    holds only the items of one `status` or `class` when asked."""
    which = job_service.ItemFilter(status, label)
    if format is ResultFormat.JSON:
        page = job_service.results_page(
            session, job_id, owner=caller.owner, limit=limit, cursor=cursor, which=which
        )
        return ResultsPage(items=[ItemOut.of(i) for i in page.rows], next_cursor=page.next_cursor)
    # The first page is read here, so a missing job (404) or a busy database (503) is
    # answered before the download's 200 goes out.
    first = _download_page(session, job_id, caller.owner, None, which)
    items = _every_item(units, job_id, caller.owner, first, which)
    if format is ResultFormat.CSV:
        return StreamingResponse(
            _csv_rows(items),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{job_id}.csv"'},
        )
    return StreamingResponse(_jsonl_rows(items), media_type="application/x-ndjson")


def _download_page(
    session: UnitOfWork,
    job_id: str,
    owner: str | None,
    cursor: str | None,
    which: job_service.ItemFilter,
) -> tuple[list[ItemOut], str | None]:
    """A page of the download as plain values, read while its session is open."""
    page = job_service.results_page(
        session, job_id, owner=owner, limit=DOWNLOAD_PAGE_ROWS, cursor=cursor, which=which
    )
    return [ItemOut.of(item) for item in page.rows], page.next_cursor


def _every_item(
    units: UnitOfWorkFactory,
    job_id: str,
    owner: str | None,
    first: tuple[list[ItemOut], str | None],
    which: job_service.ItemFilter,
) -> Iterator[ItemOut]:
    """Every item of the job, each page read in its own short transaction.

    A client may read a download as slowly as it likes, or not at all: no
    transaction or connection is held while it does, only the page in hand.
    """
    rows, cursor = first
    while True:
        yield from rows
        if cursor is None:
            return
        with units.scope(write=False) as unit:
            rows, cursor = _download_page(unit, job_id, owner, cursor, which)


def _csv_rows(items: Iterator[ItemOut]) -> Iterator[str]:
    columns = ["filename", "status", "class", "confidence", *CLASSES, "error", "custom_id"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for item in items:
        scores = item.scores or {}
        writer.writerow(
            [
                spreadsheet_safe(item.filename),
                item.status,
                item.label or "",
                "" if item.confidence is None else f"{item.confidence:.6f}",
                *("" if c not in scores else f"{scores[c]:.6f}" for c in CLASSES),
                spreadsheet_safe(item.error or ""),
                spreadsheet_safe(item.custom_id or ""),
            ]
        )
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def spreadsheet_safe(text: str) -> str:
    """A cell a spreadsheet shows as text: `=HYPERLINK(...)` and kin get a leading quote.

    Spreadsheets run a cell that starts with = + - @ (or a tab or carriage
    return before one) as a formula; OWASP's advice is to prefix it with `'`.
    """
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def _jsonl_rows(items: Iterator[ItemOut]) -> Iterator[str]:
    for item in items:
        yield json.dumps(item.model_dump(mode="json", by_alias=True)) + "\n"


@router.post(
    "/{job_id}/retry",
    status_code=202,
    response_model=JobOut,
    responses={409: {"model": ErrorResponse, "description": "No failed item can run again"}},
)
def retry(
    job_id: str,
    response: Response,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    caller: CallerDep,
) -> JobOut:
    """A new job of this finished job's failed items (`retry_of` names this one)."""
    job = retry_failed(session, storage, settings, job_id, caller.owner)
    unit_of_work.commit(session)
    response.headers["Location"] = f"/jobs/{job.id}"
    return job_out(session, job)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel(job_id: str, session: SessionDep, caller: CallerDep) -> JobOut:
    """Skip every item not yet classified; results made so far are kept."""
    job = job_service.cancel_job(session, job_id, caller.owner)
    unit_of_work.commit(session)
    return job_out(session, job)


@router.delete("/{job_id}", status_code=204)
def remove(job_id: str, session: SessionDep, storage: StorageDep, caller: CallerDep) -> Response:
    """Delete the job, its items and its stored files."""
    job_service.delete_job(session, storage, job_id, caller.owner)
    unit_of_work.commit(session)
    return Response(status_code=204)
