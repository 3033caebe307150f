"""The worker's Celery app: the shared queue interface, with this package's tasks on it."""

from __future__ import annotations

from shared.queue import JobQueue
from shared.settings import get_settings

# The worker process's settings, read once, here, where its Celery app must exist
# before the task decorators run; everything below receives them.
settings = get_settings()
job_queue = JobQueue.for_settings(settings)
celery_app = job_queue.app
