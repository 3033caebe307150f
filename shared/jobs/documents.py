"""The job as clients see it, built once for the API and for webhook payloads."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select

from shared.db.models import Item, ItemStatus, Job, JobStatus, utcnow
from shared.unit_of_work import UnitOfWork


def class_summary(session: UnitOfWork, job_id: str) -> dict[str, int]:
    return class_summaries(session, [job_id]).get(job_id, {})


def class_summaries(session: UnitOfWork, job_ids: list[str]) -> dict[str, dict[str, int]]:
    """Each job's succeeded items by class, in one query however many jobs."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(Item.job_id, Item.label, func.count())
        .where(Item.job_id.in_(job_ids), Item.status == ItemStatus.SUCCEEDED)
        .group_by(Item.job_id, Item.label)
    )
    summaries: dict[str, dict[str, int]] = {}
    for job_id, label, count in rows:
        if label is not None:
            summaries.setdefault(job_id, {})[str(label)] = int(count)
    return summaries


def job_documents(session: UnitOfWork, jobs: list[Job]) -> list[dict[str, Any]]:
    """A page of jobs as `GET /jobs` lists them: their summaries in one query, not one a job
    (a client polling a page of 500 jobs would otherwise cost 500 queries a look)."""
    summaries = class_summaries(session, [job.id for job in jobs if job.succeeded])
    return [job_document(session, job, summaries.get(job.id, {})) for job in jobs]


def job_document(
    session: UnitOfWork, job: Job, summary: dict[str, int] | None = None
) -> dict[str, Any]:
    """What `GET /jobs/{id}` answers, as JSON-ready values (`summary`: read here when not given)."""
    if summary is None:
        # Nothing is classified before the first success: spare the query (job creation).
        summary = class_summary(session, job.id) if job.succeeded else {}
    done = job.succeeded + job.failed + job.skipped
    return {
        "id": job.id,
        "status": job.status,
        "source": job.source,
        "total": job.total,
        "succeeded": job.succeeded,
        "failed": job.failed,
        "skipped": job.skipped,
        "progress": round(done / job.total, 4) if job.total else 1.0,
        "eta_seconds": eta_seconds(job, done),
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "summary": summary,
        "model_version": job.model_version,
        "webhook_url": job.webhook_url,
        "webhook_events": list(job.webhook_events or []),
        "metadata": job.client_metadata,
        "error": job.error,
        "retry_of": job.retry_of,
        "links": {
            "self": f"/jobs/{job.id}",
            "results": f"/jobs/{job.id}/results",
            "webhooks": f"/jobs/{job.id}/webhooks",
        },
    }


# A final webhook event carries the results of a job up to this many items and bytes:
# enough for the small jobs that want no second call, and bounded whatever a tenant names
# its files (zip entry names and errors have no length limit of their own).
RESULTS_IN_EVENT = 1000
RESULTS_EVENT_BYTES = 256 * 1024


def results_digest(
    session: UnitOfWork,
    job: Job,
    limit: int = RESULTS_IN_EVENT,
    max_bytes: int = RESULTS_EVENT_BYTES,
) -> dict[str, Any]:
    """The items' outcomes for a final event, in upload order, until `limit` items or
    `max_bytes` of JSON; `complete` false means the rest are at `links.results`."""
    rows = session.scalars(
        select(Item).where(Item.job_id == job.id).order_by(Item.position).limit(limit + 1)
    ).all()
    items: list[dict[str, Any]] = []
    size = 0
    for item in rows[:limit]:
        outcome = {
            "custom_id": item.custom_id,
            "filename": item.filename,
            "status": item.status,
            "class": item.label,
            "confidence": item.confidence,
            "error": item.error,
        }
        size += len(json.dumps(outcome, separators=(",", ":")).encode())
        if size > max_bytes:
            break
        items.append(outcome)
    return {"complete": len(items) == len(rows), "items": items}


def eta_seconds(job: Job, done: int) -> float | None:
    """Seconds until the job ends at the rate its items have ended since it started;
    None until that rate is known (not started, nothing done yet) or once it ended."""
    if job.status != JobStatus.RUNNING or job.started_at is None or done == 0:
        return None
    elapsed = (utcnow() - job.started_at).total_seconds()
    if elapsed <= 0:
        return None
    return round((job.total - done) * elapsed / done, 1)


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None
