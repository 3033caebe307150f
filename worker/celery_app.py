"""The worker's Celery app: the shared queue interface, with this package's tasks on it."""

from __future__ import annotations

from shared.queue import JobQueue
from shared.settings import get_settings
from shared.webhooks.events import set_dispatcher

# The worker process's settings, read once, here, where its Celery app must exist
# before the task decorators run; everything below receives them.
settings = get_settings()
job_queue = JobQueue.for_settings(settings)
celery_app = job_queue.app

# Webhook events a worker commits are enqueued after the commit.
set_dispatcher(job_queue.enqueue_webhook)
