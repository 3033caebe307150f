"""Celery tasks: they take ids, acknowledge late, and are safe to run twice.

Each task, signal handler and background loop works from the worker's context
(`worker.context`), built once by the command that started the worker.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from celery.signals import (
    setup_logging,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from shared import heartbeats
from shared.db.session import forget_inherited_connections
from shared.heartbeats import Serving
from shared.logs import configure_logging, log_context
from shared.process import die_with_parent
from shared.queue import CLASSIFY_TASK, WEBHOOK_TASK
from worker import maintenance, webhooks
from worker.batching import process_job, time_limits
from worker.celery_app import celery_app, settings
from worker.context import WorkerContext, context_of
from worker.heartbeat import Heartbeat
from worker.liveness import begin_stopping, start_main_beat

log = logging.getLogger(__name__)

DISPATCH_INTERVAL_SECONDS = 1.0


_SOFT_LIMIT, _HARD_LIMIT = time_limits(settings)


@celery_app.task(
    name=CLASSIFY_TASK,
    acks_late=True,
    soft_time_limit=_SOFT_LIMIT,
    time_limit=_HARD_LIMIT,
    bind=True,
)
def classify_job(task: Any, job_id: str) -> None:
    context = context_of(task.app)
    with log_context(job_id=job_id):
        context.queue.taken(job_id)
        process_job(job_id, context.runtime())


def _reconcile_forever(context: WorkerContext) -> None:
    settings = context.settings
    interval = min(max(settings.requeue_after_seconds / 4, 1.0), 60.0)
    interval = min(interval, settings.sweep_interval_seconds)
    next_sweep = 0.0
    while True:
        try:
            maintenance.reconcile(settings, context.units)
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + settings.sweep_interval_seconds
                maintenance.sweep(settings, context.units, context.storage)
        except Exception:  # a database or broker outage must not kill the loop
            log.exception("reconciler pass failed; retrying in %.0fs", interval)
        time.sleep(interval)


@celery_app.task(name=WEBHOOK_TASK, acks_late=True, bind=True)
def deliver_webhook(task: Any, event_id: str) -> None:
    context = context_of(task.app)
    with log_context(event_id=event_id):
        context.queue.webhook_taken(event_id)
        webhooks.deliver(event_id, context.settings, context.units)


def _dispatch_due_forever(context: WorkerContext) -> None:
    """Send every pending webhook event that is due: retries, and sends whose enqueue was lost."""
    while True:
        try:
            webhooks.dispatch_due(context.units)
        except Exception:
            log.exception("webhook dispatcher pass failed")
        time.sleep(DISPATCH_INTERVAL_SECONDS)


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    # Connected, so Celery leaves the root logger to us: one format in every process.
    configure_logging(context_of(celery_app).settings)


@worker_process_init.connect
def _load_model(**_: Any) -> None:
    # A pool child: it must not outlive the worker that owns its messages (a killed
    # worker's tasks are redelivered), and the parent's connections are not its own.
    die_with_parent(signal.SIGKILL)
    forget_inherited_connections()
    context = context_of(celery_app)
    if context.role == "classify":
        serving = context.serving()  # loads the model
        _start_heartbeat(context, "classify", os.getppid(), context.name, serving)


def _start_heartbeat(
    context: WorkerContext,
    role: str,
    main_pid: int,
    leases_of: str | None = None,
    serving: Serving | None = None,
) -> None:
    context.heartbeat = Heartbeat(
        context.settings, context.units, role, main_pid, leases_of, serving
    )
    context.heartbeat.start()


@worker_process_shutdown.connect
@worker_shutdown.connect
def _say_goodbye(**_: Any) -> None:
    heartbeat = context_of(celery_app).heartbeat
    if heartbeat is not None:
        heartbeat.stop()


@worker_shutting_down.connect
def _stop_claiming(**_: Any) -> None:
    # In the main process, at SIGTERM: it waits for the task in hand, whose pool child
    # then finishes the groups it holds instead of claiming the rest of its turn.
    begin_stopping()


def _exit_when_stalled(context: WorkerContext) -> None:
    """In the Celery main process: exit once this worker's heartbeat went stale.

    The pool child beats only while it makes progress; a child stuck in a pass
    (or on the database) stops, and this ends the worker so whatever runs it
    (`serve`'s supervisor, a container's restart policy) starts a fresh one.

    A partition is not a stall: while the database cannot be reached (or answers
    slower than a beat), nobody's heartbeat can be written, so the watch trusts a
    stale heartbeat only once the database has answered promptly for a whole
    WORKER_STALE_SECONDS; a healthy child beats again well within that.
    """
    settings = context.settings
    name = f"classify@{socket.gethostname()}:{os.getpid()}"
    reachable_since = time.monotonic()
    while True:
        time.sleep(settings.heartbeat_interval_seconds)
        asked = time.monotonic()
        try:
            with context.units.scope(write=False) as session:
                stalled = heartbeats.stale(session, name, settings.worker_stale_seconds)
        except Exception:  # the database is away: that is not this worker's stall
            reachable_since = time.monotonic()
            continue
        if time.monotonic() - asked > settings.heartbeat_interval_seconds:
            reachable_since = time.monotonic()  # it answered, but only just: not trusted yet
            continue
        if stalled and time.monotonic() - reachable_since >= settings.worker_stale_seconds:
            log.error("this worker makes no progress (heartbeat stale); exiting to be restarted")
            os._exit(1)


@worker_ready.connect
def _start_background_loops(**_: Any) -> None:
    context = context_of(celery_app)
    if context.role == "classify":
        start_main_beat()
        _in_thread("stall-watch", _exit_when_stalled, context)
        _in_thread("reconciler", _reconcile_forever, context)
    else:
        _in_thread("dispatcher", _dispatch_due_forever, context)
        _start_heartbeat(context, "webhooks", os.getpid())


def _in_thread(name: str, target: Callable[..., None], *args: Any) -> None:
    threading.Thread(target=target, args=args, name=name, daemon=True).start()
