"""What a classify task works with: settings, the loaded model, storage, the queue, its name."""

from __future__ import annotations

from dataclasses import dataclass

from shared.classifier.loaded import Classifier
from shared.queue import JobQueue
from shared.settings import Settings
from shared.storage import Storage


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    classifier: Classifier
    storage: Storage
    queue: JobQueue  # sends what each unit of work's outbox holds after its commit
    name: str  # host:pid of the pool child: what its item leases name
