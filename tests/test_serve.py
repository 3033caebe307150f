"""`serve` on embedded defaults: its workers live and die with it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from testkit.processes import Service, free_port, service_env, wait_for
from tests.conftest import image_bytes

JPEG = image_bytes(size=(48, 48), fmt="JPEG", colour=(40, 90, 160))

pytestmark = pytest.mark.model


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "gone"


def test_sigterm_to_serve_stops_its_workers(tmp_path: Path) -> None:
    service = Service(service_env(tmp_path), tmp_path, free_port())
    serve = service.start_serve()
    children = _children(serve.popen.pid)
    assert len(children) == 2  # the classification worker and the webhook worker
    # The embedded default runs without keys, and says so.
    assert "API keys are off (AUTH_ENABLED=false)" in serve.output()
    # One line says when it is ready, with what model; nothing alarming comes before it.
    ready = wait_for(
        lambda: next((line for line in serve.output().splitlines() if "ready: " in line), None),
        120,
        "the ready line",
    )
    assert f"ready: {service.url} — model " in ready
    assert "Ctrl-C stops everything" in ready
    # Requests after the ready line are not logged either (ACCESS_LOG is off): a client
    # polling its job does not flood the terminal.
    for _ in range(3):
        assert httpx.get(f"{service.url}/jobs", timeout=10).status_code == 200
    # Nor is each job: Celery's task lines and the worker's batch lines stay out of it.
    with service.client() as client:
        job = client.post("/jobs", files={"file": ("a.jpg", JPEG)}).json()
    assert service.wait_job(job["id"])["status"] == "succeeded"
    noise = ("-------------- celery@", "No hostname was supplied", "superuser privileges")
    quiet = (
        "Uvicorn running on",
        "GET /readyz",
        "GET /jobs",
        "received",
        "batch of",
        "succeeded in",
    )
    for line in (*noise, *quiet):
        assert line not in serve.output()
    serve.stop(signal.SIGTERM)
    wait_for(lambda: not any(_alive(pid) for pid in children), 60, "the workers to exit")
    assert "stopped: the API and both workers" in serve.output()
    for line in ("Warm shutdown", "Shutting down", "Traceback"):
        assert line not in serve.output()


def _worker_pid(serve_pid: int) -> int:
    for pid in _children(serve_pid):
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"worker" in command:
            return pid
    raise AssertionError("serve has no classification worker")


def test_a_killed_worker_is_restarted_and_readiness_tracks_it(tmp_path: Path) -> None:
    env = service_env(tmp_path, HEARTBEAT_INTERVAL_SECONDS="1", WORKER_STALE_SECONDS="4")
    service = Service(env, tmp_path, free_port())
    serve = service.start_serve()
    try:
        with service.client() as client:

            def readiness() -> tuple[int, str]:
                response = client.get("/readyz")
                return response.status_code, response.json()["checks"].get("workers", "")

            wait_for(lambda: readiness() == (200, "ok"), 60, "the worker's first heartbeat")
            metrics = client.get("/metrics").text
            assert 'intel_workers_alive{role="classify"} 1.0' in metrics
            assert service.cli("alive", "--role", "classify").stdout.strip() == "alive"

            # A hung worker (stopped, with its pool child) stops beating: readiness says so.
            killed = _worker_pid(serve.popen.pid)
            frozen = [killed, *_children(killed)]
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            _, check = wait_for(
                lambda: (r := readiness())[0] == 503 and r, 30, "readiness to notice"
            )
            assert "no classification worker alive in the last 4s" in check
            for pid in frozen:  # then it dies, and the supervisor starts another
                os.kill(pid, signal.SIGKILL)
            wait_for(
                lambda: "worker exited with code -9; restarting it in 1s" in serve.output(),
                10,
                "the supervisor to notice",
            )
            wait_for(lambda: readiness() == (200, "ok"), 120, "the restarted worker")
            assert _worker_pid(serve.popen.pid) != killed
            job = client.post("/jobs", files={"file": ("a.jpg", JPEG)}).json()
            assert service.wait_job(job["id"], timeout=120)["status"] == "succeeded"
    finally:
        serve.stop(signal.SIGTERM)
