"""What a worker process holds for its life: the loaded model, the upload storage, the queue."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

from shared.classifier.model import Classifier, load_classifier
from shared.queue import JobQueue
from shared.settings import Settings
from shared.storage import Storage, open_storage

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    classifier: Classifier
    storage: Storage
    queue: JobQueue  # sends what each unit of work's outbox holds after its commit
    name: str


_runtime: Runtime | None = None
# Which worker this process is: "classify" holds the model; "webhooks" only delivers.
role = "classify"


def load(settings: Settings, queue: JobQueue) -> Runtime:
    """Load the model once for this process; later calls return the same runtime."""
    global _runtime
    if _runtime is None:
        classifier = load_classifier(
            settings.model_path,
            settings.base_weights,
            settings.inference_backend,
            cache_dir=settings.cache_dir,
            precision=settings.inference_precision,
            throughput=True,
        )
        _runtime = Runtime(
            settings=settings,
            classifier=classifier,
            storage=open_storage(settings.resolved_storage_url),
            queue=queue,
            name=f"{socket.gethostname()}:{os.getpid()}",
        )
        log.info("model %s loaded in worker %s", classifier.version, _runtime.name)
    return _runtime
