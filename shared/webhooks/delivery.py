"""Webhook delivery, in steps a task composes: claim the event, attempt it, record the attempt.

No transaction spans the HTTP call: the claim (a lease) and the record are two
units of work, and the attempt in between touches no database.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, exists, func, or_, select, update
from sqlalchemy.orm import aliased

from shared import metrics, outbox
from shared.db.models import WebhookAttempt, WebhookEvent, WebhookEventStatus, utcnow
from shared.errors import Conflict, InvalidInput, RateLimited, describe
from shared.settings import Settings
from shared.unit_of_work import UnitOfWork
from shared.webhooks.events import FINAL_EVENTS
from shared.webhooks.guard import Unresolvable, loggable_url, parse_networks
from shared.webhooks.sender import Reply, post
from shared.webhooks.signing import signature_header

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_SECONDS = 24 * 3600
REDELIVER_INTERVAL_SECONDS = 10
USER_AGENT = "intel-image-classifier-webhooks/1"


@dataclass(frozen=True)
class Outcome:
    status: WebhookEventStatus
    status_code: int | None
    error: str | None
    retry_in_seconds: float | None


@dataclass(frozen=True)
class Claimed:
    """An event this process holds the lease on, with what its attempt needs."""

    event_id: str
    url: str
    body: str
    previous_attempts: int
    job_id: str = ""


@dataclass(frozen=True)
class Attempt:
    outcome: Outcome
    attempted_at: datetime
    duration_ms: float


def _first_pending_of_its_job() -> ColumnElement[bool]:
    """No earlier event of the same job is still pending: a receiver gets a job's events
    in the order they were written (job.started, job.progress, then the final one)."""
    earlier = aliased(WebhookEvent)
    return ~exists().where(
        earlier.job_id == WebhookEvent.job_id,
        earlier.status == WebhookEventStatus.PENDING,
        or_(
            earlier.created_at < WebhookEvent.created_at,
            and_(earlier.created_at == WebhookEvent.created_at, earlier.id < WebhookEvent.id),
        ),
    )


def claim_event(session: UnitOfWork, event_id: str, settings: Settings) -> Claimed | None:
    """Lease a due event for one attempt; None when it is not due, already done, leased,
    or waiting behind an earlier event of its job."""
    lease = timedelta(seconds=settings.webhook_timeout_seconds + 30)
    now = utcnow()
    claimed = session.execute(
        update(WebhookEvent)
        .where(
            WebhookEvent.id == event_id,
            WebhookEvent.status == WebhookEventStatus.PENDING,
            WebhookEvent.next_attempt_at <= now,
            or_(WebhookEvent.lease_until.is_(None), WebhookEvent.lease_until < now),
            _first_pending_of_its_job(),
        )
        .values(lease_until=now + lease)
        .returning(WebhookEvent.url, WebhookEvent.body, WebhookEvent.attempts, WebhookEvent.job_id)
    ).one_or_none()
    if claimed is None:
        return None
    url, body, previous_attempts, job_id = claimed
    return Claimed(event_id, url, body, previous_attempts, job_id)


def attempt(event: Claimed, settings: Settings) -> Attempt:
    """Sign and POST the event once; whatever the receiver does becomes the outcome."""
    started = time.perf_counter()
    attempted_at = utcnow()
    response: Reply | None = None
    error: str | None = None
    try:
        timestamp = int(time.time())
        response = post(
            event.url,
            event.body.encode(),
            {
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                "webhook-id": event.event_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signature_header(
                    settings.webhook_secret_list, event.event_id, timestamp, event.body
                ),
            },
            allowed=parse_networks(settings.webhook_allowed_networks),
            deadline_seconds=settings.webhook_timeout_seconds,
        )
    except Unresolvable as exc:  # DNS trouble is often passing: retried like a failed attempt
        error = exc.message
    except InvalidInput as exc:
        error = f"refused: {exc.message}"
    except Exception as exc:  # whatever the receiver or the network did, it is one attempt
        error = describe(exc)
    duration_ms = (time.perf_counter() - started) * 1000
    outcome = _decide(response, error, event.previous_attempts + 1, settings)
    log.info("webhook %s to %s: %s", event.event_id, loggable_url(event.url), outcome)
    return Attempt(outcome, attempted_at, duration_ms)


def record_attempt(session: UnitOfWork, event: Claimed, done: Attempt) -> None:
    """Write the attempt, then schedule the next one or end the event; releases the lease."""
    outcome = done.outcome
    session.add(
        WebhookAttempt(
            event_id=event.event_id,
            attempted_at=done.attempted_at,
            status_code=outcome.status_code,
            error=outcome.error,
            duration_ms=round(done.duration_ms, 1),
            retry_in_seconds=outcome.retry_in_seconds,
        )
    )
    retry_at = (
        utcnow() + timedelta(seconds=outcome.retry_in_seconds)
        if outcome.retry_in_seconds is not None
        else None
    )
    session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id == event.event_id)
        .values(
            status=outcome.status,
            attempts=event.previous_attempts + 1,
            next_attempt_at=retry_at,
            lease_until=None,
        )
    )
    outcome_label = "retry" if outcome.status == WebhookEventStatus.PENDING else outcome.status
    metrics.count(session, metrics.WEBHOOK_ATTEMPTS, outcome=str(outcome_label))
    if outcome.status != WebhookEventStatus.PENDING:
        _send_next_of_job(session, event.job_id)


def _send_next_of_job(session: UnitOfWork, job_id: str) -> None:
    """The event that waited behind this one goes out after the commit, not a second later."""
    following = session.scalars(
        select(WebhookEvent.id)
        .where(WebhookEvent.job_id == job_id, WebhookEvent.status == WebhookEventStatus.PENDING)
        .order_by(WebhookEvent.created_at, WebhookEvent.id)
        .limit(1)
    ).first()
    if following is not None:
        outbox.add_event(session, following)


def _decide(response: Reply | None, error: str | None, attempt: int, settings: Settings) -> Outcome:
    code = response.status_code if response is not None else None
    if code is not None and 200 <= code < 300:
        return Outcome(WebhookEventStatus.DELIVERED, code, None, None)
    if code == 410:
        return Outcome(WebhookEventStatus.GONE, code, "receiver answered 410 Gone", None)
    if error is not None and error.startswith("refused:"):
        return Outcome(WebhookEventStatus.FAILED, None, error, None)
    if code is not None:
        error = f"HTTP {code}"
    delays = settings.webhook_retry_delays
    if attempt > len(delays):
        return Outcome(WebhookEventStatus.FAILED, code, f"{error}; retries exhausted", None)
    retry_after = _retry_after(response) if code in {429, 503} else None
    if retry_after is not None:
        delay = retry_after
    else:  # jitter spreads retries of many events that failed together
        delay = delays[attempt - 1] * random.uniform(0.9, 1.1)
    return Outcome(WebhookEventStatus.PENDING, code, error, round(delay, 3))


def _retry_after(response: Reply | None) -> float | None:
    value = response.headers.get("retry-after") if response is not None else None
    if not value:
        return None
    if value.strip().isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(when.tzinfo)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def due_events(session: UnitOfWork, limit: int = 200) -> list[str]:
    """Pending events whose time has come and which no delivery holds."""
    now = utcnow()
    return list(
        session.scalars(
            select(WebhookEvent.id)
            .where(
                WebhookEvent.status == WebhookEventStatus.PENDING,
                WebhookEvent.next_attempt_at <= now,
                or_(WebhookEvent.lease_until.is_(None), WebhookEvent.lease_until < now),
                _first_pending_of_its_job(),
            )
            .order_by(WebhookEvent.next_attempt_at)
            .limit(limit)
        )
    )


def _limit_redelivery(session: UnitOfWork, event: WebhookEvent) -> None:
    """One redelivery per event per REDELIVER_INTERVAL_SECONDS: a client cannot turn the
    webhook worker into a load generator against a receiver, its own or another's."""
    now = utcnow()
    last_attempt = session.scalar(
        select(func.max(WebhookAttempt.attempted_at)).where(WebhookAttempt.event_id == event.id)
    )
    requested = event.next_attempt_at if event.status == WebhookEventStatus.PENDING else None
    latest = max((t for t in (last_attempt, requested) if t is not None), default=None)
    if latest is not None and (now - latest).total_seconds() < REDELIVER_INTERVAL_SECONDS:
        wait = REDELIVER_INTERVAL_SECONDS - (now - latest).total_seconds()
        raise RateLimited(
            f"this event was sent or requested {(now - latest).total_seconds():.0f}s ago; "
            f"redeliver at most once every {REDELIVER_INTERVAL_SECONDS}s",
            wait,
        )


def redeliver_final_event(session: UnitOfWork, job_id: str) -> WebhookEvent:
    """Send a job's final event again, with the same webhook-id and a fresh retry schedule.

    The caller has begun a write transaction and checked the job is the caller's
    (`shared.jobs.records.redeliver_final_event`).
    """
    final = session.scalars(
        select(WebhookEvent)
        .where(WebhookEvent.job_id == job_id, WebhookEvent.type.in_(FINAL_EVENTS.values()))
        .order_by(WebhookEvent.created_at.desc())
        .limit(1)
    ).one_or_none()
    if final is None:
        raise Conflict(
            f"job {job_id} has no final webhook event yet (no webhook_url, or not ended)"
        )
    _limit_redelivery(session, final)
    final.status = WebhookEventStatus.PENDING
    final.attempts = 0
    final.next_attempt_at = utcnow()
    final.lease_until = None
    outbox.add_event(session, final.id)
    return final
