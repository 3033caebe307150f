"""What a worker process holds for its life, built once when it starts.

The CLI builds the context for the role it runs (`classify` or `webhooks`) and
attaches it to the Celery app before the worker starts; a classify worker's
pool child then loads the model into its copy and starts its heartbeat
(`worker.tasks`). Each task takes the context from the app that runs it and
passes it on: no module holds worker state.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Literal

from shared.classifier import artifact
from shared.classifier.loaded import Classifier
from shared.classifier.model import load_classifier
from shared.heartbeats import Serving
from shared.queue import JobQueue
from shared.settings import Settings
from shared.storage import Storage, open_storage
from shared.unit_of_work import UnitOfWorkFactory
from worker.heartbeat import Heartbeat
from worker.runtime import Runtime

log = logging.getLogger(__name__)

Role = Literal["classify", "webhooks"]
_ATTRIBUTE = "intel_worker_context"


@dataclass
class WorkerContext:
    settings: Settings
    queue: JobQueue
    units: UnitOfWorkFactory  # every unit of work of this process, sending through `queue`
    role: Role
    storage: Storage
    classifier: Classifier | None = None  # loaded by a classify worker's pool child
    heartbeat: Heartbeat | None = None

    @property
    def name(self) -> str:
        """This process, as item leases name it: host:pid."""
        return f"{socket.gethostname()}:{os.getpid()}"

    def load_classifier(self) -> Classifier:
        if self.classifier is None:
            settings = self.settings
            self.classifier = load_classifier(
                settings.model_path,
                settings.base_weights,
                settings.inference_backend,
                cache_dir=settings.cache_dir,
                precision=settings.inference_precision,
                throughput=True,
            )
            log.info("model %s loaded in worker %s", self.classifier.version, self.name)
        return self.classifier

    def serving(self) -> Serving:
        """What this worker serves, for its heartbeat (and so for GET /models)."""
        classifier = self.load_classifier()
        accuracy = artifact.test_accuracy(self.settings.model_path, classifier.precision)
        return Serving(classifier.version, classifier.precision, accuracy)

    def runtime(self) -> Runtime:
        """What a classify task works with: this context, with its model loaded."""
        return Runtime(
            self.settings, self.load_classifier(), self.storage, self.units, self.name, self.queue
        )


def build(settings: Settings, queue: JobQueue, role: Role) -> WorkerContext:
    units = UnitOfWorkFactory(settings, sender=queue)
    return WorkerContext(settings, queue, units, role, open_storage(settings.resolved_storage_url))


def attach(app: Any, context: WorkerContext) -> None:
    setattr(app, _ATTRIBUTE, context)


def context_of(app: Any) -> WorkerContext:
    context = getattr(app, _ATTRIBUTE, None)
    if not isinstance(context, WorkerContext):
        raise RuntimeError("no worker context: start workers with `intel-classifier worker`")
    return context
