"""A worker's heartbeat: a row written every HEARTBEAT_INTERVAL_SECONDS while it makes progress."""

from __future__ import annotations

import logging
import socket
import threading

from shared import heartbeats
from shared.db.models import utcnow
from shared.jobs.processing import extend_leases
from shared.settings import Settings
from shared.unit_of_work import UnitOfWorkFactory
from worker.liveness import liveness

log = logging.getLogger(__name__)


class Heartbeat:
    """Writes this worker's heartbeat every HEARTBEAT_INTERVAL_SECONDS from a thread.

    A classification worker beats from the pool child that holds the model, once
    the model is loaded (a worker whose child cannot load it is not alive), and
    only while it makes progress (`worker.liveness`): each beat also extends the
    leases on the items it holds. The row is named after the Celery main process,
    the one `serve`'s supervisor started, so the supervisor can tell when it stalls.
    """

    def __init__(
        self,
        settings: Settings,
        units: UnitOfWorkFactory,
        role: str,
        main_pid: int,
        leases_of: str | None = None,
        serving: heartbeats.Serving | None = None,
    ) -> None:
        self.settings = settings
        self.units = units
        self.serving = serving
        self.role = role
        self.host = socket.gethostname()
        self.name = f"{role}@{self.host}:{main_pid}"
        self.leases_of = leases_of
        self.started_at = utcnow()
        self.stopped = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="heartbeat", daemon=True).start()

    def _run(self) -> None:
        interval = self.settings.heartbeat_interval_seconds
        while not self.stopped.is_set():
            if liveness.making_progress():
                self._beat()
            else:
                log.error("no progress within the step's deadline: not beating, leases lapse")
            self.stopped.wait(interval)

    def _beat(self) -> None:
        try:
            with self.units.scope() as session:
                heartbeats.beat(
                    session, self.name, self.role, self.host, self.started_at, self.serving
                )
                if self.leases_of is not None:
                    extend_leases(session, self.leases_of, self.settings.requeue_after_seconds)
        except Exception:  # a database outage: beat again next time
            log.warning("heartbeat not written; retrying", exc_info=True)

    def stop(self) -> None:
        self.stopped.set()
        try:
            with self.units.scope() as session:
                heartbeats.forget(session, self.name)
        except Exception:
            log.warning("heartbeat row left behind; it goes stale on its own", exc_info=True)
