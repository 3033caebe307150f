"""Jobs, their items, and the batches workers ran: SQLAlchemy 2.0 typed models."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Text,
    TypeDecorator,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Alembic needs deterministic constraint names to alter them later.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, also on SQLite, which stores no offset."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class JobSource(StrEnum):
    """Which call made the job: POST /jobs, or the synchronous POST /predict."""

    JOBS = "jobs"
    PREDICT = "predict"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIALLY_SUCCEEDED = "partially_succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self not in {JobStatus.QUEUED, JobStatus.RUNNING}


class ItemStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ApiKey(Base):
    """A client's key: only its SHA-256 is stored; the prefix finds the row."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(24), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The key's share of the workers against other keys with work waiting (fair share).
    weight: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # An operator's key: it may also read every key's usage (GET /usage/keys).
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_owner_id_created_at", "owner_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # The API key that created the job; None when the server runs without keys.
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"))
    status: Mapped[str] = mapped_column(String(24), default=JobStatus.QUEUED, index=True)
    source: Mapped[str] = mapped_column(String(16), default=JobSource.JOBS, server_default="jobs")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    total: Mapped[int] = mapped_column(Integer, default=0)
    succeeded: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    # Pinned when the job is admitted (the version new jobs get), else by the first
    # worker that claims it: only workers serving it run the job's items.
    model_version: Mapped[str | None] = mapped_column(String(64), index=True)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # `metadata` is reserved on declarative classes; the column keeps the API's name.
    client_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # The job whose failed items this one runs again (POST /jobs/{id}/retry). Not a
    # foreign key: the original may expire or be deleted before its retry.
    retry_of: Mapped[str | None] = mapped_column(String(36))
    error: Mapped[str | None] = mapped_column(Text)
    # Events beyond the final one the client asked for: job.started, job.progress.
    webhook_events: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    progress_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    items: Mapped[list[Item]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True
    )


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (
        Index("ix_items_job_id_position", "job_id", "position"),
        # The claim query: queued items, fairest first (low positions of every job).
        Index("ix_items_status_position", "status", "position"),
        Index("ix_items_sha256", "sha256"),
        # A tenant's next items: its jobs in order, each job's queued items by position.
        Index("ix_items_job_id_status_position", "job_id", "status", "position"),
        # Suspects, oldest first: every claim looks for one, and there are few. Without
        # it the look reads every queued item (a planner without statistics does so
        # even through the status index).
        Index(
            "ix_items_suspects",
            "status",
            "created_at",
            "position",
            postgresql_where=text("solo IS true"),
            sqlite_where=text("solo IS 1"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    storage_key: Mapped[str | None] = mapped_column(Text)
    # An input by reference: the http(s) URL or s3:// key a worker fetches it from.
    source_url: Mapped[str | None] = mapped_column(Text)
    # The caller's own id for the item (unique in its job); a zip entry's name by default.
    custom_id: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=ItemStatus.QUEUED)
    label: Mapped[str | None] = mapped_column("class", String(32))
    confidence: Mapped[float | None] = mapped_column(Float)
    scores: Mapped[dict[str, float] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    inference_ms: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    batch_id: Mapped[str | None] = mapped_column(String(36))
    # Set when identical bytes were already classified by the same model version.
    reused_from: Mapped[str | None] = mapped_column(String(36))
    # The model (weights and precision, e.g. "3f2a9c1b7d4e-int8") that made the result.
    model_version: Mapped[str | None] = mapped_column(String(64))
    # The lease of a running item: the worker holding it, and until when. A live
    # worker extends it while it makes progress; past it the reconciler takes it back.
    leased_by: Mapped[str | None] = mapped_column(String(255))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set when the item entered a decode or a forward pass (and was charged an
    # attempt for it): only such items are suspects when their worker dies.
    in_pass: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # A suspect runs alone next time, so only an image that kills a worker by itself
    # uses up its attempts.
    solo: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    job: Mapped[Job] = relationship(back_populates="items")


class TenantShare(Base):
    """How much service a tenant has had, in items over its weight (fair share)."""

    __tablename__ = "tenant_shares"

    tenant: Mapped[str] = mapped_column(String(36), primary_key=True)
    served: Mapped[float] = mapped_column(Float)


class SchedulerClock(Base):
    """The fair scheduler's virtual time: where a tenant that comes back starts from.

    One row; claims lock it, so workers on every host form batches one at a time.
    """

    __tablename__ = "scheduler_clock"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    virtual_time: Mapped[float] = mapped_column(Float)


class Batch(Base):
    """One forward pass a worker ran: how batches formed, for tests and metrics."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    worker: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    jobs: Mapped[int] = mapped_column(Integer)
    inference_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class WebhookEventStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    GONE = "gone"  # the receiver answered 410: no more attempts for this job
    FAILED = "failed"  # the retry schedule ran out, or the URL was refused at delivery


class WebhookEvent(Base):
    """One event to deliver; its id is the `webhook-id` every attempt carries."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        Index("ix_webhook_events_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(
        Text
    )  # frozen at creation: every attempt sends the same bytes
    status: Mapped[str] = mapped_column(String(16), default=WebhookEventStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # since the last (re)delivery request
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    attempt_log: Mapped[list[WebhookAttempt]] = relationship(
        order_by="WebhookAttempt.attempted_at",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    event_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_events.id", ondelete="CASCADE"), index=True
    )
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float] = mapped_column(Float)
    retry_in_seconds: Mapped[float | None] = mapped_column(Float)  # None: no retry follows


class IdempotencyKey(Base):
    """The job an `Idempotency-Key` created, and a digest of the request that made it."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (PrimaryKeyConstraint("owner", "key", name="pk_idempotency_keys"),)

    owner: Mapped[str] = mapped_column(String(36))  # the API key's id, or "" without keys
    key: Mapped[str] = mapped_column(String(255))
    request_sha256: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(String(36))  # kept after retention deletes the job
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class MetricCounter(Base):
    """A monotonic counter series for /metrics, written in the transaction that counts it.

    Kept in the database so every API and worker process reports the same totals,
    and so retention, which deletes jobs, never makes a counter go backwards.
    """

    __tablename__ = "metric_counters"
    __table_args__ = (PrimaryKeyConstraint("name", "labels", name="pk_metric_counters"),)

    name: Mapped[str] = mapped_column(String(100))
    labels: Mapped[str] = mapped_column(String(200))  # canonical JSON object of label values
    value: Mapped[float] = mapped_column(Float, default=0.0)


class WorkerHeartbeat(Base):
    """A worker process that says it is alive: written every few seconds while it runs."""

    __tablename__ = "worker_heartbeats"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # role@host:pid
    role: Mapped[str] = mapped_column(String(16), index=True)  # "classify" or "webhooks"
    host: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # What a classify worker serves (None for webhook workers): GET /models reads it.
    model_version: Mapped[str | None] = mapped_column(String(64))
    model_precision: Mapped[str | None] = mapped_column(String(16))
    model_accuracy: Mapped[float | None] = mapped_column(Float)
