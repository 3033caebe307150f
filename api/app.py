"""The FastAPI application. It never imports TensorFlow: workers hold the model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.formparsers import MultiPartParser

from api.auth import Authentication
from api.deps import Resources
from api.errors import install_error_handlers
from api.hygiene import RepeatedHeaders, UrlHygiene
from api.limits import UploadLimit
from api.routes import events, health, jobs, metrics, models, page, predict, usage, webhooks
from shared import finished
from shared.settings import Settings, get_settings

# Uploaded parts go to disk past 64 KiB: at Starlette's 1 MiB default, one request of
# 500 parts would hold 500 MiB in memory.
SPOOL_MAX_BYTES = 64 * 1024


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API; uvicorn calls it with no settings, and then they are read from the environment."""
    settings = settings or get_settings()
    resources = Resources.of(settings)
    MultiPartParser.spool_max_size = SPOOL_MAX_BYTES

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Waiting /predict calls are woken by word from the workers (shared.finished).
        finished.listen(settings, resources.waiters.heard)
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="intel-image-classifier",
        version="0.1.0",
        description=(
            "Classify scene photos (buildings, forest, glacier, mountain, sea, street) "
            "asynchronously: upload an image or a zip, poll the job, download results."
        ),
    )
    app.state.resources = resources
    app.include_router(jobs.router)
    app.include_router(events.router)
    app.include_router(webhooks.router)
    app.include_router(predict.router)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(metrics.router)
    app.include_router(usage.router)
    app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=page.STATIC_DIR), name="static")
    install_error_handlers(app)
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(UrlHygiene)
    # A stranger's upload is refused before it streams in.
    app.add_middleware(Authentication, settings=settings, units=resources.units)
    # Added last, so it runs first: no one reads a header two readers could read apart.
    app.add_middleware(RepeatedHeaders)
    return app
