"""POST /predict: the original demo's synchronous call, served by the same queue and workers."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, File, UploadFile

from api.auth import CallerDep
from api.deps import SessionDep, SettingsDep, StorageDep
from api.errors import ERROR_RESPONSES
from api.schemas import PredictOut
from shared.db.models import Item, ItemStatus, Job, JobStatus
from shared.errors import PredictTimeout, UnreadableImage
from shared.services.intake import Upload, require_one_image
from shared.services.submission import submit_job
from worker.celery_app import enqueue_job

router = APIRouter(tags=["predict"], responses=ERROR_RESPONSES)

POLL_SECONDS = 0.02


@router.post(
    "/predict",
    response_model=PredictOut,
    response_model_by_alias=True,
    responses={504: {"description": "Not classified within PREDICT_TIMEOUT_SECONDS"}},
)
def predict(
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    caller: CallerDep,
    file: Annotated[UploadFile, File(description="One image")],
) -> PredictOut:
    """Classify one image and wait for the answer: `{"class": ..., "confidence": ...}`."""
    upload = Upload(file.filename or "upload", file.file)
    require_one_image(upload)
    job = submit_job(
        session, storage, settings, [upload], enqueue=enqueue_job, owner_id=caller.key_id
    ).job
    deadline = time.monotonic() + settings.predict_timeout_seconds
    while time.monotonic() < deadline:
        session.rollback()  # end the read transaction: a new one sees the worker's writes
        current = session.get(Job, job.id, populate_existing=True)
        if current is not None and JobStatus(current.status).is_final:
            break
        time.sleep(POLL_SECONDS)
    else:
        raise PredictTimeout(
            f"not classified within {settings.predict_timeout_seconds:g}s "
            f"(PREDICT_TIMEOUT_SECONDS); poll /jobs/{job.id}",
            job.id,
        )
    item = session.query(Item).filter(Item.job_id == job.id).one()
    if item.status != ItemStatus.SUCCEEDED or item.label is None:
        raise UnreadableImage(item.filename, item.error or "not classified")
    return PredictOut(
        label=item.label,
        confidence=item.confidence or 0.0,
        scores=item.scores or {},
        job_id=job.id,
        model_version=current.model_version if current else None,
    )
