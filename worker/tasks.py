"""Celery tasks: they take ids, acknowledge late, and are safe to run twice."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery.signals import worker_init, worker_ready

from shared.db.session import session_scope
from shared.services.processing import requeue_stale
from shared.settings import get_settings
from worker import runtime
from worker.batching import process_job
from worker.celery_app import CLASSIFY_TASK, celery_app, enqueue_job

log = logging.getLogger(__name__)


@celery_app.task(name=CLASSIFY_TASK, acks_late=True)
def classify_job(job_id: str) -> None:
    if process_job(job_id, runtime.load()):
        enqueue_job(job_id)  # more to do: a fresh message, so other jobs get their turn


def reconcile_once() -> list[str]:
    """Requeue what a dead worker or a lost message left behind, then enqueue those jobs."""
    with session_scope() as session:
        jobs = requeue_stale(session, get_settings().requeue_after_seconds)
    for job_id in jobs:
        enqueue_job(job_id)
    if jobs:
        log.warning("reconciler enqueued %d job(s) again: %s", len(jobs), ", ".join(jobs))
    return jobs


def _reconcile_forever() -> None:
    interval = min(max(get_settings().requeue_after_seconds / 4, 1.0), 60.0)
    while True:
        try:
            reconcile_once()
        except Exception:  # a database or broker outage must not kill the loop
            log.exception("reconciler pass failed; retrying in %.0fs", interval)
        time.sleep(interval)


@worker_init.connect
def _load_model(**_: Any) -> None:
    runtime.load()


@worker_ready.connect
def _start_reconciler(**_: Any) -> None:
    threading.Thread(target=_reconcile_forever, name="reconciler", daemon=True).start()
