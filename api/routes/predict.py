"""POST /predict: the original demo's synchronous call, served by the same queue and workers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from api.auth import CallerDep
from api.deps import SessionDep, SettingsDep, StorageDep, WaitersDep
from api.errors import ERROR_RESPONSES
from api.forms import model_name, one_image
from api.schemas import PredictOut
from api.waiting import wait_until_final
from shared import unit_of_work
from shared.db.models import ItemStatus, JobSource, new_id
from shared.errors import ItemFailed, PredictTimeout
from shared.jobs.submission import submit_job
from shared.settings import Settings
from shared.storage import Storage
from shared.unit_of_work import UnitOfWork

router = APIRouter(tags=["predict"], responses=ERROR_RESPONSES)


def _submit(
    session: UnitOfWork,
    storage: Storage,
    settings: Settings,
    file: UploadFile | None,
    owner: str | None,
    job_id: str,
    model: str | None,
) -> None:
    image = one_image(file)
    submit_job(
        session,
        storage,
        settings,
        [image],
        owner_id=owner,
        source=JobSource.PREDICT,
        job_id=job_id,
        model=model,
    )
    unit_of_work.commit(session)


@router.post(
    "/predict",
    response_model=PredictOut,
    response_model_by_alias=True,
    responses={504: {"description": "Not classified within PREDICT_TIMEOUT_SECONDS"}},
)
async def predict(
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    caller: CallerDep,
    waiters: WaitersDep,
    file: Annotated[UploadFile | None, File(description="One image")] = None,
    model: Annotated[
        str | None,
        Form(description="Run on this model version (GET /models); default: the one new jobs get"),
    ] = None,
) -> PredictOut:
    """Classify one image and wait for the answer: `{"class": ..., "confidence": ...}`.

    The wait holds neither a thread nor a database connection, and ends when the
    worker says the job ended (api/waiting.py).
    """
    job_id = new_id()
    woken = waiters.expect(job_id)  # before the commit: no word of its end can be missed
    try:
        await run_in_threadpool(
            _submit, session, storage, settings, file, caller.key_id, job_id, model_name(model)
        )
        ended = await wait_until_final(session, job_id, settings.predict_timeout_seconds, woken)
    finally:
        waiters.forget(job_id)
    if ended is None:
        raise PredictTimeout(
            f"not classified within {settings.predict_timeout_seconds:g}s "
            f"(PREDICT_TIMEOUT_SECONDS); poll /jobs/{job_id}",
            job_id,
        )
    job, item = ended
    if item.status != ItemStatus.SUCCEEDED or item.label is None:
        # The item's error already names the file and the reason: said once, as recorded.
        raise ItemFailed(item.error or f"{item.filename!r} was not classified")
    return PredictOut(
        label=item.label,
        confidence=item.confidence or 0.0,
        scores=item.scores or {},
        job_id=job_id,
        model_version=job.model_version,
    )
