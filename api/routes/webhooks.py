"""/jobs/{id}/webhooks: every delivery attempt, and sending the final event again."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from api.auth import CallerDep
from api.deps import SessionDep
from api.errors import ERROR_RESPONSES
from api.schemas import ErrorResponse, WebhookEventList, WebhookEventOut
from shared import unit_of_work
from shared.db.models import WebhookEvent
from shared.jobs.records import get_job, redeliver_final_event

router = APIRouter(prefix="/jobs/{job_id}/webhooks", tags=["webhooks"], responses=ERROR_RESPONSES)


@router.get("", response_model=WebhookEventList)
def list_events(job_id: str, session: SessionDep, caller: CallerDep) -> WebhookEventList:
    get_job(session, job_id, caller.owner)
    events = session.scalars(
        select(WebhookEvent).where(WebhookEvent.job_id == job_id).order_by(WebhookEvent.created_at)
    ).all()
    return WebhookEventList(items=[WebhookEventOut.of(e) for e in events])


@router.post(
    "/redeliver",
    status_code=202,
    response_model=WebhookEventOut,
    responses={
        429: {"model": ErrorResponse, "description": "Redelivered less than 10 s ago"},
        409: {"model": ErrorResponse, "description": "The job has no final event yet"},
    },
)
def redeliver(job_id: str, session: SessionDep, caller: CallerDep) -> WebhookEventOut:
    """Send the job's final event again (same webhook-id), on a fresh retry schedule."""
    event = redeliver_final_event(session, job_id, caller.owner)
    unit_of_work.commit(session)
    return WebhookEventOut.of(event)
