"""Request and response bodies, as the OpenAPI schema declares them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.db.models import Item, Job


class ErrorBody(BaseModel):
    code: str = Field(examples=["limit_exceeded"])
    message: str = Field(examples=["'big.zip' has 30,000 entries, over the limit of 20,000"])
    details: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class JobLinks(BaseModel):
    self: str
    results: str


class JobOut(BaseModel):
    id: str
    status: str
    total: int
    succeeded: int
    failed: int
    skipped: int
    progress: float = Field(ge=0, le=1)
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    summary: dict[str, int] = Field(description="Images classified so far, per class")
    model_version: str | None
    webhook_url: str | None
    metadata: dict[str, Any]
    error: str | None
    links: JobLinks

    @classmethod
    def of(cls, job: Job, summary: dict[str, int]) -> JobOut:
        done = job.succeeded + job.failed + job.skipped
        return cls(
            id=job.id,
            status=job.status,
            total=job.total,
            succeeded=job.succeeded,
            failed=job.failed,
            skipped=job.skipped,
            progress=round(done / job.total, 4) if job.total else 1.0,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            summary=summary,
            model_version=job.model_version,
            webhook_url=job.webhook_url,
            metadata=job.client_metadata,
            error=job.error,
            links=JobLinks(self=f"/jobs/{job.id}", results=f"/jobs/{job.id}/results"),
        )


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class ItemOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str
    filename: str
    status: str
    label: str | None = Field(serialization_alias="class", validation_alias="class")
    confidence: float | None
    scores: dict[str, float] | None
    error: str | None
    sha256: str | None
    started_at: datetime | None
    finished_at: datetime | None
    inference_ms: float | None

    @classmethod
    def of(cls, item: Item) -> ItemOut:
        return cls(
            id=item.id,
            filename=item.filename,
            status=item.status,
            label=item.label,
            confidence=item.confidence,
            scores=item.scores,
            error=item.error,
            sha256=item.sha256,
            started_at=item.started_at,
            finished_at=item.finished_at,
            inference_ms=item.inference_ms,
        )


class ResultsPage(BaseModel):
    items: list[ItemOut]
    next_cursor: str | None


class PredictOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    label: str = Field(serialization_alias="class", validation_alias="class")
    confidence: float
    scores: dict[str, float]
    job_id: str
    model_version: str | None


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
