"""The queue interface both sides share: task names, the broker, and sending messages.

Redis when REDIS_URL is set, else the embedded filesystem broker; both carry the
same messages (job and event ids only, the database holds every state). The API
sends through a `JobQueue` it is given; the worker builds its Celery app, with the
tasks, from `make_celery` here. Neither imports the other.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.utils import timer2

from shared import fs_broker
from shared.finished import FinishedAnnouncer
from shared.queue_marks import FolderMarks, PendingMarks, RedisMarks
from shared.settings import Settings

CLASSIFY_TASK = "worker.tasks.classify_job"
QUEUE = "classify"
WEBHOOK_TASK = "worker.tasks.deliver_webhook"
WEBHOOK_QUEUE = "webhooks"


def broker_options(settings: Settings) -> tuple[str, dict[str, Any]]:
    if settings.redis_url:
        # Past the visibility timeout an unacknowledged message is delivered again;
        # tasks are short (a few batches) and idempotent, so a generous bound is safe.
        return settings.redis_url, {"visibility_timeout": 3600}
    folder = settings.broker_folder
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return f"{fs_broker.ALIAS}://", {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
        "polling_interval": 0.005,
    }


class PromptTimer(timer2.Timer):  # type: ignore[misc]
    """Celery's worker timer, woken when it is stopped.

    With no timed entries it waits a second at a time on a condition that nothing
    notifies at shutdown, and the worker's shutdown waits for it: Ctrl-C took two
    seconds longer than it needed to.
    """

    def stop(self) -> None:
        self._Timer__is_shutdown.set()
        with self.not_empty:
            self.not_empty.notify_all()
        super().stop()


def make_celery(settings: Settings) -> Celery:
    broker, options = broker_options(settings)
    app = Celery("intel_classifier", broker=broker)
    app.conf.update(
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        # A worker's shutdown waits for its timer thread's sleep (up to this) and idle
        # wait (PromptTimer): short ones let Ctrl-C stop a worker at once.
        worker_timer_precision=0.1,
        worker_timer=f"{__name__}:PromptTimer",
        worker_hijack_root_logger=False,
        # The model is loaded once per pool child at start; a child is replaced only
        # when a task's hard time limit kills it, and the new one loads it again.
        worker_max_tasks_per_child=None,
        worker_proc_alive_timeout=600,
    )
    return app


def pending_marks(settings: Settings, kind: str = "") -> PendingMarks:
    """Marks of the jobs (or, with kind "event", the webhook events) with a message waiting."""
    # Long enough for a message to wait out a backlog; short enough that a mark left by
    # a process that died between marking and sending delays its job only so long.
    ttl = max(6 * settings.requeue_after_seconds, 600.0)
    if settings.redis_url:
        return RedisMarks(settings.redis_url, ttl, kind)
    return FolderMarks(settings.broker_folder / ("pending" + (f"-{kind}s" if kind else "")), ttl)


class JobQueue:
    """Wake-up messages for jobs and webhook events, at most one waiting for each."""

    def __init__(
        self,
        app: Celery,
        marks: PendingMarks,
        event_marks: PendingMarks,
        announcer: FinishedAnnouncer | None = None,
    ) -> None:
        self.app = app
        self.marks = marks
        self.event_marks = event_marks
        self.announcer = announcer

    def enqueue(self, job_id: str) -> bool:
        """Send the job's message unless one is waiting already; True when one was sent."""
        if not self.marks.set(job_id):
            return False
        try:
            # By name, so the API never imports the task code.
            self.app.send_task(CLASSIFY_TASK, args=[job_id], queue=QUEUE)
        except BaseException:
            self.marks.clear(job_id)
            raise
        return True

    def asked(self, job_id: str) -> str | None:
        """A token that changes whenever the job's message is asked for (an enqueue),
        whether or not one was sent; None when that cannot be told (look instead)."""
        try:
            return self.marks.asked(job_id)
        except Exception:  # Redis away: the caller reads the database for itself
            return None

    def taken(self, job_id: str) -> None:
        """A task took the job's message: the next enqueue sends a new one."""
        self.marks.clear(job_id)

    def enqueue_webhook(self, event_id: str) -> None:
        """Send the event's delivery message unless one is waiting already."""
        if not self.event_marks.set(event_id):
            return
        try:
            self.app.send_task(WEBHOOK_TASK, args=[event_id], queue=WEBHOOK_QUEUE)
        except BaseException:
            self.event_marks.clear(event_id)
            raise

    def webhook_taken(self, event_id: str) -> None:
        """A delivery task took the event's message: the next enqueue sends a new one."""
        self.event_marks.clear(event_id)

    def announce_finished(self, job_ids: list[str]) -> None:
        """Tell waiting API processes these jobs ended (`shared.finished`)."""
        if self.announcer is not None:
            self.announcer.announce(job_ids)

    @classmethod
    def for_settings(cls, settings: Settings) -> JobQueue:
        return cls(
            make_celery(settings),
            pending_marks(settings),
            pending_marks(settings, "event"),
            FinishedAnnouncer(settings),
        )
