"""Deliver one webhook attempt: sign, POST, record, and schedule the next try or stop."""

from __future__ import annotations

import email.utils
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from shared import metrics
from shared.db.models import WebhookAttempt, WebhookEvent, WebhookEventStatus, utcnow
from shared.db.session import session_scope
from shared.errors import Conflict, InvalidInput
from shared.settings import Settings
from shared.webhooks.events import FINAL_EVENTS, schedule_dispatch
from shared.webhooks.guard import check_webhook_url, parse_networks
from shared.webhooks.signing import signature_header

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_SECONDS = 24 * 3600
USER_AGENT = "intel-image-classifier-webhooks/1"


@dataclass(frozen=True)
class Outcome:
    status: WebhookEventStatus
    status_code: int | None
    error: str | None
    retry_in_seconds: float | None


def deliver(event_id: str, settings: Settings, client: httpx.Client) -> Outcome | None:
    """One attempt for a due event; None when it is not due, already done, or leased elsewhere."""
    lease = timedelta(seconds=settings.webhook_timeout_seconds + 30)
    now = utcnow()
    with session_scope() as session:
        claimed = session.execute(
            update(WebhookEvent)
            .where(
                WebhookEvent.id == event_id,
                WebhookEvent.status == WebhookEventStatus.PENDING,
                WebhookEvent.next_attempt_at <= now,
                or_(WebhookEvent.lease_until.is_(None), WebhookEvent.lease_until < now),
            )
            .values(lease_until=now + lease)
            .returning(WebhookEvent.url, WebhookEvent.body, WebhookEvent.attempts)
        ).one_or_none()
    if claimed is None:
        return None
    url, body, previous_attempts = claimed

    started = time.perf_counter()
    attempted_at = utcnow()
    response: httpx.Response | None = None
    error: str | None = None
    try:
        check_webhook_url(url, parse_networks(settings.webhook_allowed_networks))
        timestamp = int(time.time())
        response = client.post(
            url,
            content=body.encode(),
            headers={
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                "webhook-id": event_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signature_header(
                    settings.webhook_secret_list, event_id, timestamp, body
                ),
            },
        )
    except InvalidInput as exc:
        error = f"refused: {exc.message}"
    except httpx.TimeoutException:
        error = f"timed out after {settings.webhook_timeout_seconds:g}s"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    duration_ms = (time.perf_counter() - started) * 1000

    outcome = _decide(response, error, previous_attempts + 1, settings)
    with session_scope() as session:
        session.add(
            WebhookAttempt(
                event_id=event_id,
                attempted_at=attempted_at,
                status_code=outcome.status_code,
                error=outcome.error,
                duration_ms=round(duration_ms, 1),
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
            .where(WebhookEvent.id == event_id)
            .values(
                status=outcome.status,
                attempts=previous_attempts + 1,
                next_attempt_at=retry_at,
                lease_until=None,
            )
        )
        outcome_label = "retry" if outcome.status == WebhookEventStatus.PENDING else outcome.status
        metrics.count(session, metrics.WEBHOOK_ATTEMPTS, outcome=str(outcome_label))
    log.info("webhook %s to %s: %s", event_id, url, outcome)
    return outcome


def _decide(
    response: httpx.Response | None, error: str | None, attempt: int, settings: Settings
) -> Outcome:
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


def _retry_after(response: httpx.Response | None) -> float | None:
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


def due_events(limit: int = 200) -> list[str]:
    """Pending events whose time has come and which no delivery holds."""
    now = utcnow()
    with session_scope(write=False) as session:
        return list(
            session.scalars(
                select(WebhookEvent.id)
                .where(
                    WebhookEvent.status == WebhookEventStatus.PENDING,
                    WebhookEvent.next_attempt_at <= now,
                    or_(WebhookEvent.lease_until.is_(None), WebhookEvent.lease_until < now),
                )
                .order_by(WebhookEvent.next_attempt_at)
                .limit(limit)
            )
        )


def redeliver_final_event(session: Session, job_id: str) -> WebhookEvent:
    """Send a job's final event again, with the same webhook-id and a fresh retry schedule."""
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
    final.status = WebhookEventStatus.PENDING
    final.attempts = 0
    final.next_attempt_at = utcnow()
    final.lease_until = None
    schedule_dispatch(session, final.id)
    return final
