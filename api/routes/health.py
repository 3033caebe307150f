"""Liveness and readiness."""

from __future__ import annotations

import os

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import SettingsDep, UnitsDep
from api.schemas import Health
from shared import heartbeats
from shared.db.session import ConnectionLimits, engine_for
from shared.settings import Settings
from shared.unit_of_work import UnitOfWorkFactory

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(settings: SettingsDep, units: UnitsDep) -> JSONResponse:
    """The database and the broker answer, and the workers that do the work are alive."""
    checks = {"database": _check_database(settings), "broker": _check_broker(settings)}
    if checks["database"] == "ok":
        checks["workers"] = _check_workers(settings, units)
    ready = all(value == "ok" for value in checks.values())
    body = Health(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def _check_database(settings: Settings) -> str:
    try:
        engine = engine_for(settings.resolved_database_url, ConnectionLimits.of(settings))
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


ROLE_NAMES = {"classify": "classification worker", "webhooks": "webhook worker"}


def _check_workers(settings: Settings, units: UnitOfWorkFactory) -> str:
    needed = ["classify"] + (["webhooks"] if settings.webhook_secret_list else [])
    try:
        with units.scope(write=False) as unit:
            alive = heartbeats.alive_counts(unit, settings.worker_stale_seconds)
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    missing = [ROLE_NAMES[role] for role in needed if alive[role] == 0]
    if missing:
        return (
            f"error: no {' and no '.join(missing)} alive in the last "
            f"{settings.worker_stale_seconds:g}s (WORKER_STALE_SECONDS)"
        )
    return "ok"


def _check_broker(settings: Settings) -> str:
    try:
        if settings.redis_url:
            import redis

            redis.Redis.from_url(settings.redis_url, socket_timeout=2).ping()
        elif not os.access(settings.broker_folder / "queue", os.W_OK):
            return "error: broker folder not writable"
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"
