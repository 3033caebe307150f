"""/models: the model versions live workers serve, and the one new jobs get."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import SessionDep, SettingsDep
from api.errors import ERROR_RESPONSES
from api.schemas import ModelList, ModelOut
from shared.jobs.versions import live_versions, version_for_new_jobs

router = APIRouter(prefix="/models", tags=["models"], responses=ERROR_RESPONSES)


@router.get("", response_model=ModelList)
def list_models(session: SessionDep, settings: SettingsDep) -> ModelList:
    """Each version a live worker serves: precision, test-split accuracy, live workers."""
    versions = live_versions(session, settings.worker_stale_seconds)
    default = version_for_new_jobs(versions, settings)
    return ModelList(
        items=[
            ModelOut(
                version=v.version,
                precision=v.precision,
                test_accuracy=v.accuracy,
                live_workers=v.workers,
                new_jobs=v.version == default,
            )
            for v in versions
        ],
        new_jobs_get=default,
    )
