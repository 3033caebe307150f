"""Keep `serve`'s worker processes running: a child that dies is started again, with backoff."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

FIRST_DELAY_SECONDS = 1.0
LONGEST_DELAY_SECONDS = 60.0
# A child that ran this long before dying starts the backoff again from the first delay.
HEALTHY_AFTER_SECONDS = 60.0
STALL_CHECK_SECONDS = 5.0


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    env: dict[str, str] | None
    popen: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    # Says whether the running process (by pid) is alive but makes no progress.
    stalled: Callable[[int], bool] | None = None
    next_stall_check: float = 0.0


@dataclass
class Supervisor:
    preexec: Callable[[], None] | None = None
    poll_seconds: float = 0.5
    children: list[Child] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def add(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        stalled: Callable[[int], bool] | None = None,
    ) -> None:
        child = Child(name, argv, env, stalled=stalled)
        self.children.append(child)
        self._start(child)

    def run_in_background(self) -> None:
        threading.Thread(target=self._watch, name="supervisor", daemon=True).start()

    def _start(self, child: Child) -> None:
        # The workers log to stderr; their stdout carries only Celery's own prints
        # ("worker: Warm shutdown (MainProcess)"), which serve keeps quiet.
        child.popen = subprocess.Popen(
            child.argv, env=child.env, preexec_fn=self.preexec, stdout=subprocess.DEVNULL
        )
        child.started = time.monotonic()
        child.restart_at = None

    def _watch(self) -> None:
        while not self.stopping.wait(self.poll_seconds):
            for child in self.children:
                self._check(child)

    def _check(self, child: Child) -> None:
        now = time.monotonic()
        if child.restart_at is not None:
            if now >= child.restart_at and not self.stopping.is_set():
                log.warning("starting %s again", child.name)
                self._start(child)
            return
        code = child.popen.poll() if child.popen else None
        if code is None:
            self._kill_if_stalled(child, now)
            return
        if now - child.started >= HEALTHY_AFTER_SECONDS:
            child.failures = 0
        delay = min(FIRST_DELAY_SECONDS * 2**child.failures, LONGEST_DELAY_SECONDS)
        child.failures += 1
        child.restart_at = now + delay
        log.error("%s exited with code %s; restarting it in %.0fs", child.name, code, delay)

    def _kill_if_stalled(self, child: Child, now: float) -> None:
        """A child alive but stalled (its heartbeat stopped) is killed, then restarted."""
        if child.stalled is None or child.popen is None or now < child.next_stall_check:
            return
        child.next_stall_check = now + STALL_CHECK_SECONDS
        try:
            stalled = child.stalled(child.popen.pid)
        except Exception:  # the database is down: that is no worker's fault
            log.warning("could not read %s's heartbeat", child.name, exc_info=True)
            return
        if stalled:
            log.error("%s is alive but makes no progress (heartbeat stale); killing it", child.name)
            child.popen.kill()

    def stop(self, timeout_seconds: float = 30.0) -> None:
        self.stopping.set()
        running = [c.popen for c in self.children if c.popen and c.popen.poll() is None]
        for popen in running:
            popen.terminate()
        for popen in running:
            try:
                popen.wait(timeout=timeout_seconds)
            except subprocess.TimeoutExpired:
                popen.kill()
