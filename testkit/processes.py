"""Real processes for the service tests: the API (uvicorn) and Celery workers, on real ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shared.db.models import JobStatus


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class Service:
    env: dict[str, str]
    data_dir: Path
    port: int
    processes: list[Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`intel-classifier ARGS` with this service's settings, output captured."""
        return subprocess.run(
            [sys.executable, "-m", "intel_classifier", *args],
            env=self.env,
            check=check,
            capture_output=True,
            text=True,
        )

    def migrate(self) -> None:
        self.cli("migrate")

    def new_key(self, name: str, *options: str) -> str:
        """A new API key: `keys create` prints it on its last line."""
        created = self.cli("keys", "create", "--name", name, *options)
        return created.stdout.strip().splitlines()[-1]

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> Process:
        log = self.data_dir / f"{name}-{len(self.processes)}.log"
        stream = log.open("wb")
        popen = subprocess.Popen(
            [sys.executable, "-m", "intel_classifier", *args],
            env={**self.env, **(env or {})},
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def start_api(self) -> Process:
        process = self.spawn("api", "api", "--port", str(self.port))
        with _stopped_unless_up(process):
            wait_for(lambda: self._answers("/healthz") or _died(process), 60, "the API")
        return process

    def start_worker(self, **overrides: str) -> Process:
        """A classify worker, with settings of its own where `overrides` give them."""
        process = self.spawn("worker", "worker", env=overrides)
        with _stopped_unless_up(process):
            wait_for(lambda: " ready." in process.output() or _died(process), 180, "a worker")
        return process

    def start_serve(self) -> Process:
        process = self.spawn("serve", "serve", "--port", str(self.port))
        with _stopped_unless_up(process):
            wait_for(
                lambda: process.output().count(" ready.") >= 2 or _died(process), 180, "workers"
            )
            wait_for(lambda: self._answers("/healthz") or _died(process), 60, "serve's API")
        return process

    def _answers(self, path: str) -> bool:
        try:
            return httpx.get(self.url + path, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_job(self, job_id: str, timeout: float = 180) -> dict[str, Any]:
        with self.client() as client:

            def finished() -> dict[str, Any] | None:
                response = client.get(f"/jobs/{job_id}")
                if response.status_code != 200:
                    raise AssertionError(f"GET /jobs/{job_id}: {response.text}\n{self.logs()}")
                job: dict[str, Any] = response.json()
                return job if JobStatus(job["status"]).is_final else None

            result: dict[str, Any] = wait_for(finished, timeout, f"job {job_id}", 0.2)
            return result

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.output()[-4000:]}" for p in self.processes)


@contextmanager
def running_api(data_dir: Path, **overrides: str) -> Iterator[Service]:
    """A migrated database and one API process on `service_env(data_dir, **overrides)`."""
    service = Service(service_env(data_dir, **overrides), data_dir, free_port())
    service.migrate()
    try:
        service.start_api()
        yield service
    finally:
        service.stop()


@contextmanager
def running_serve(data_dir: Path, **overrides: str) -> Iterator[Service]:
    """`serve` (API and both workers) on `service_env(data_dir, **overrides)`, as `make run`."""
    service = Service(service_env(data_dir, **overrides), data_dir, free_port())
    try:
        service.start_serve()
        yield service
    finally:
        service.stop()


def _died(process: Process) -> bool:
    return process.popen.poll() is not None


@contextmanager
def _stopped_unless_up(process: Process) -> Iterator[None]:
    """Waits for `process` to come up; if it died or a wait failed, it is stopped, not left
    running (with its workers) for the rest of the session."""
    try:
        yield
        _raise_if_died(process)
    except BaseException:
        process.stop()
        raise


def _raise_if_died(process: Process) -> None:
    if process.popen.poll() is not None:
        raise RuntimeError(
            f"{process.name} exited with {process.popen.returncode}:\n{process.output()}"
        )


def service_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
    env.update(
        {
            "DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "INFERENCE_BATCH_SIZE": "8",
            # Tests and benches submit far faster than a client; the limit has its own tests.
            "RATE_LIMIT_PER_MINUTE": "0",
        }
    )
    env.update(overrides)
    return env


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The `error` object of a response that must have `status` and the one error shape."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    assert {"code", "message"} <= set(body["error"])
    error: dict[str, Any] = body["error"]
    assert error["message"]
    return error
