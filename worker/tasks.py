"""Celery tasks: they take ids, acknowledge late, and are safe to run twice."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from celery.signals import (
    setup_logging,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from shared import heartbeats
from shared.db.models import utcnow
from shared.db.session import forget_inherited_connections
from shared.jobs.processing import extend_leases
from shared.jobs.retention import SweepReport
from shared.logs import configure_logging, log_context
from shared.process import die_with_parent
from shared.queue import CLASSIFY_TASK, WEBHOOK_TASK
from shared.storage import open_storage
from shared.unit_of_work import session_scope
from worker import maintenance, runtime, webhooks
from worker.batching import process_job, time_limits
from worker.celery_app import celery_app, job_queue, settings
from worker.liveness import liveness, start_main_beat

log = logging.getLogger(__name__)

DISPATCH_INTERVAL_SECONDS = 1.0


_SOFT_LIMIT, _HARD_LIMIT = time_limits(settings)


@celery_app.task(
    name=CLASSIFY_TASK, acks_late=True, soft_time_limit=_SOFT_LIMIT, time_limit=_HARD_LIMIT
)
def classify_job(job_id: str) -> None:
    with log_context(job_id=job_id):
        job_queue.taken(job_id)
        process_job(job_id, runtime.load(settings, job_queue))


def sweep_once() -> SweepReport:
    return maintenance.sweep(settings, open_storage(settings.resolved_storage_url))


def _reconcile_forever() -> None:
    interval = min(max(settings.requeue_after_seconds / 4, 1.0), 60.0)
    interval = min(interval, settings.sweep_interval_seconds)
    next_sweep = 0.0
    while True:
        try:
            maintenance.reconcile(settings, job_queue)
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + settings.sweep_interval_seconds
                sweep_once()
        except Exception:  # a database or broker outage must not kill the loop
            log.exception("reconciler pass failed; retrying in %.0fs", interval)
        time.sleep(interval)


@celery_app.task(name=WEBHOOK_TASK, acks_late=True)
def deliver_webhook(event_id: str) -> None:
    with log_context(event_id=event_id):
        job_queue.webhook_taken(event_id)
        webhooks.deliver(event_id, settings, job_queue)


def _dispatch_due_forever() -> None:
    """Send every pending webhook event that is due: retries, and sends whose enqueue was lost."""
    while True:
        try:
            webhooks.dispatch_due(settings, job_queue)
        except Exception:
            log.exception("webhook dispatcher pass failed")
        time.sleep(DISPATCH_INTERVAL_SECONDS)


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    # Connected, so Celery leaves the root logger to us: one format in every process.
    configure_logging(settings)


class Heartbeat:
    """Writes this worker's heartbeat every HEARTBEAT_INTERVAL_SECONDS from a thread.

    A classification worker beats from the pool child that holds the model, once
    the model is loaded (a worker whose child cannot load it is not alive), and
    only while it makes progress (`worker.liveness`): each beat also extends the
    leases on the items it holds. The row is named after the Celery main process,
    the one `serve`'s supervisor started, so the supervisor can tell when it stalls.
    """

    def __init__(self, role: str, main_pid: int, leases_of: str | None = None) -> None:
        self.role = role
        self.host = socket.gethostname()
        self.name = f"{role}@{self.host}:{main_pid}"
        self.leases_of = leases_of
        self.started_at = utcnow()
        self.stopped = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="heartbeat", daemon=True).start()

    def _run(self) -> None:
        interval = settings.heartbeat_interval_seconds
        while not self.stopped.is_set():
            if liveness.making_progress():
                self._beat()
            else:
                log.error("no progress within the step's deadline: not beating, leases lapse")
            self.stopped.wait(interval)

    def _beat(self) -> None:
        try:
            with session_scope(settings) as session:
                heartbeats.beat(session, self.name, self.role, self.host, self.started_at)
                if self.leases_of is not None:
                    extend_leases(session, self.leases_of, settings.requeue_after_seconds)
        except Exception:  # a database outage: beat again next time
            log.warning("heartbeat not written; retrying", exc_info=True)

    def stop(self) -> None:
        self.stopped.set()
        try:
            with session_scope(settings) as session:
                heartbeats.forget(session, self.name)
        except Exception:
            log.warning("heartbeat row left behind; it goes stale on its own", exc_info=True)


_heartbeat: Heartbeat | None = None


def _start_heartbeat(role: str, main_pid: int, leases_of: str | None = None) -> None:
    global _heartbeat
    _heartbeat = Heartbeat(role, main_pid, leases_of)
    _heartbeat.start()


@worker_process_init.connect
def _load_model(**_: Any) -> None:
    # A pool child: it must not outlive the worker that owns its messages (a killed
    # worker's tasks are redelivered), and the parent's connections are not its own.
    die_with_parent(signal.SIGKILL)
    forget_inherited_connections()
    if runtime.role == "classify":
        loaded = runtime.load(settings, job_queue)
        _start_heartbeat("classify", os.getppid(), leases_of=loaded.name)


@worker_process_shutdown.connect
@worker_shutdown.connect
def _say_goodbye(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()


def _exit_when_stalled() -> None:
    """In the Celery main process: exit once this worker's heartbeat went stale.

    The pool child beats only while it makes progress; a child stuck in a pass
    (or on the database) stops, and this ends the worker so whatever runs it
    (`serve`'s supervisor, a container's restart policy) starts a fresh one.
    """
    name = f"classify@{socket.gethostname()}:{os.getpid()}"
    while True:
        time.sleep(settings.heartbeat_interval_seconds)
        try:
            with session_scope(settings, write=False) as session:
                stalled = heartbeats.stale(session, name, settings.worker_stale_seconds)
        except Exception:  # the database is away: that is not this worker's stall
            continue
        if stalled:
            log.error("this worker makes no progress (heartbeat stale); exiting to be restarted")
            os._exit(1)


@worker_ready.connect
def _start_background_loops(**_: Any) -> None:
    if runtime.role == "classify":
        start_main_beat()
        threading.Thread(target=_exit_when_stalled, name="stall-watch", daemon=True).start()
        threading.Thread(target=_reconcile_forever, name="reconciler", daemon=True).start()
    else:
        threading.Thread(target=_dispatch_due_forever, name="dispatcher", daemon=True).start()
        _start_heartbeat("webhooks", os.getpid())
