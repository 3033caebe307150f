"""Request and response bodies, as the OpenAPI schema declares them."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.db.models import Item, JobSource, WebhookEvent


class ErrorBody(BaseModel):
    code: str = Field(examples=["limit_exceeded"])
    message: str = Field(examples=["'big.zip' has 30,000 entries, over the limit of 20,000"])
    details: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class JobLinks(BaseModel):
    self: str
    results: str
    webhooks: str


class JobOut(BaseModel):
    id: str
    status: str
    source: JobSource = Field(description="`jobs` (POST /jobs) or `predict` (POST /predict)")
    total: int
    succeeded: int
    failed: int
    skipped: int
    progress: float = Field(ge=0, le=1)
    eta_seconds: float | None = Field(
        description="Seconds left at the rate its items have ended so far; null until known"
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    summary: dict[str, int] = Field(description="Images classified so far, per class")
    model_version: str | None
    webhook_url: str | None
    webhook_events: list[str] = Field(description="Optional events asked for besides the final one")
    metadata: dict[str, Any]
    error: str | None
    retry_of: str | None = Field(
        description="The job whose failed items this one runs again (POST /jobs/{id}/retry)"
    )
    links: JobLinks


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None
    total: int = Field(description="Jobs matching the filters, on every page")


class ItemOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str
    filename: str
    custom_id: str | None = Field(
        default=None, description="The caller's id for the item; the file (zip entry) name if none"
    )
    source_url: str | None = Field(
        default=None, description="Where an input by reference came from"
    )
    status: str
    label: str | None = Field(serialization_alias="class", validation_alias="class")
    confidence: float | None
    scores: dict[str, float] | None
    error: str | None
    sha256: str | None
    started_at: datetime | None
    finished_at: datetime | None
    inference_ms: float | None
    reused: bool = Field(description="Identical bytes were already classified by this model")
    model_version: str | None = Field(
        default=None, description="The model (weights and precision) that produced the result"
    )

    @classmethod
    def of(cls, item: Item) -> ItemOut:
        return cls(
            id=item.id,
            filename=item.filename,
            custom_id=item.custom_id,
            source_url=item.source_url,
            status=item.status,
            label=item.label,
            confidence=item.confidence,
            scores=item.scores,
            error=item.error,
            sha256=item.sha256,
            started_at=item.started_at,
            finished_at=item.finished_at,
            inference_ms=item.inference_ms,
            reused=item.reused_from is not None,
            model_version=item.model_version,
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


class ModelOut(BaseModel):
    version: str
    precision: str | None
    test_accuracy: float | None = Field(description="On the model's own test split")
    live_workers: int
    new_jobs: bool = Field(description="Whether new jobs are pinned to this version")


class ModelList(BaseModel):
    items: list[ModelOut]
    new_jobs_get: str | None = Field(
        description="The version new jobs are pinned to; null: the first worker to claim them"
    )


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class WebhookAttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    attempted_at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float
    retry_in_seconds: float | None = Field(
        description="Delay before the next attempt; null if none"
    )


class WebhookEventOut(BaseModel):
    id: str = Field(description="The webhook-id header of every attempt")
    type: str
    status: str
    url: str
    created_at: datetime
    next_attempt_at: datetime | None
    attempts: list[WebhookAttemptOut]

    @classmethod
    def of(cls, event: WebhookEvent) -> WebhookEventOut:
        return cls(
            id=event.id,
            type=event.type,
            status=event.status,
            url=event.url,
            created_at=event.created_at,
            next_attempt_at=event.next_attempt_at,
            attempts=[WebhookAttemptOut.model_validate(a) for a in event.attempt_log],
        )


class WebhookEventList(BaseModel):
    items: list[WebhookEventOut]


class DayUsageOut(BaseModel):
    day: date | None = Field(description="The day (UTC); null in `total`")
    classified: int = Field(description="Images classified, reused results included")
    failed: int
    reused: int = Field(description="Classified by reusing the result of an identical image")


class UsageOut(BaseModel):
    key: str | None = Field(description="The API key's id; null on a server without keys")
    first_day: date
    last_day: date
    days: list[DayUsageOut] = Field(description="Each day of the range with any use, in order")
    total: DayUsageOut


class KeysUsageOut(BaseModel):
    first_day: date
    last_day: date
    keys: list[UsageOut] = Field(description="Each key with any use in the range")
