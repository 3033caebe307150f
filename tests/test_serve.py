"""`serve` on embedded defaults: its workers live and die with it."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.harness import Service, free_port, service_env, wait_for

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
    serve.stop(signal.SIGTERM)
    wait_for(lambda: not any(_alive(pid) for pid in children), 60, "the workers to exit")
