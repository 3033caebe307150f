"""What a classify task works with: settings, model, storage, units of work, name, queue."""

from __future__ import annotations

from dataclasses import dataclass

from shared.classifier.loaded import Classifier
from shared.queue import JobQueue
from shared.settings import Settings
from shared.storage import Storage
from shared.unit_of_work import UnitOfWorkFactory


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    classifier: Classifier
    storage: Storage
    units: UnitOfWorkFactory  # each claim, charge and record is one unit of work
    name: str  # host:pid of the pool child: what its item leases name
    queue: JobQueue  # whether a message waits (the lane's says a /predict call does)
