"""Webhooks end to end: the API and the webhook worker as processes, a real receiver on loopback.

Jobs end by cancellation here (job.cancelled), so no model is needed; the
classification path's final events are covered in tests/shared/jobs/test_events.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from testkit.processes import Service, free_port, service_env, wait_for
from tests.conftest import fresh_postgres_database, image_bytes

SECRETS = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"]
JPEG = image_bytes(size=(32, 32), fmt="JPEG")


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: str
    at: float


@dataclass
class Receiver:
    """Answers each path from a script: "500", "410", "429:2" (Retry-After 2), "hang", "200"."""

    port: int
    scripts: dict[str, list[str]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    state = Receiver(free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            body = self.rfile.read(length).decode()
            state.received.append(
                Received(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
                )
            )
            script = state.scripts.get(self.path, [])
            action = script.pop(0) if len(script) > 1 else (script[0] if script else "200")
            if action == "hang":
                time.sleep(3)  # past the client's timeout
                action = "200"
            code, _, retry_after = action.partition(":")
            self.send_response(int(code))
            if retry_after:
                self.send_header("Retry-After", retry_after)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", state.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()


@pytest.fixture(scope="module")
def service(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("webhooks")
    with fresh_postgres_database() as database_url:
        env = service_env(
            data_dir,
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            WEBHOOK_SECRETS=",".join(SECRETS),
            WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
            WEBHOOK_RETRY_SCHEDULE="1,1,1",
            WEBHOOK_TIMEOUT_SECONDS="1",
        )
        service = Service(env, data_dir, free_port())
        service.migrate()
        try:
            service.start_api()
            process = service.spawn("webhooks", "webhooks")
            wait_for(lambda: " ready." in process.output(), 60, "the webhook worker")
            yield service
        finally:
            service.stop()


def submit_and_cancel(service: Service, url: str, **form: str) -> str:
    with service.client() as client:
        response = client.post(
            "/jobs", files={"file": ("a.jpg", JPEG)}, data={"webhook_url": url, **form}
        )
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
    return job_id


def events_of(service: Service, job_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{service.url}/jobs/{job_id}/webhooks")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def settled(service: Service, job_id: str, attempts: int) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        events = events_of(service, job_id)
        final = events[-1] if events else None
        if final and final["status"] != "pending" and len(final["attempts"]) >= attempts:
            return final
        return None

    result: dict[str, Any] = wait_for(done, 60, f"{attempts} webhook attempt(s)", 0.2)
    return result


def test_failures_and_a_timeout_are_retried_until_a_signed_event_lands(
    service: Service, receiver: Receiver
) -> None:
    receiver.scripts["/flaky"] = ["500", "hang", "200"]
    job_id = submit_and_cancel(service, receiver.url("/flaky"))
    event = settled(service, job_id, attempts=3)

    assert event["status"] == "delivered"
    assert event["type"] == "job.cancelled"
    codes = [(a["status_code"], a["error"]) for a in event["attempts"]]
    assert codes[0] == (500, "HTTP 500")
    assert codes[1][0] is None
    assert "no complete answer within 1s (WEBHOOK_TIMEOUT_SECONDS)" in codes[1][1]
    assert codes[2] == (200, None)
    delays = [a["retry_in_seconds"] for a in event["attempts"]]
    assert 0.9 <= delays[0] <= 1.1  # the schedule's 1 s, with jitter
    assert 0.9 <= delays[1] <= 1.1
    assert delays[2] is None

    requests = receiver.on("/flaky")
    assert len(requests) == 3
    assert {r.headers["webhook-id"] for r in requests} == {event["id"]}  # one id for every retry
    for request in requests:
        for secret in SECRETS:  # every configured secret signed it
            payload = Webhook(secret).verify(request.body, request.headers)
            assert payload["type"] == "job.cancelled"
    payload = json.loads(requests[-1].body)
    assert set(payload) == {"type", "timestamp", "data"}
    job = httpx.get(f"{service.url}/jobs/{job_id}").json()
    assert payload["data"]["id"] == job_id
    assert payload["data"]["status"] == job["status"] == "cancelled"
    assert payload["data"]["links"] == job["links"]


def test_410_stops_retrying(service: Service, receiver: Receiver) -> None:
    receiver.scripts["/gone"] = ["410"]
    job_id = submit_and_cancel(service, receiver.url("/gone"))
    event = settled(service, job_id, attempts=1)
    assert event["status"] == "gone"
    time.sleep(2.5)  # longer than the retry schedule's first delay: nothing more comes
    assert len(receiver.on("/gone")) == 1
    assert len(events_of(service, job_id)[-1]["attempts"]) == 1


def test_retry_after_is_honoured(service: Service, receiver: Receiver) -> None:
    receiver.scripts["/busy"] = ["429:2", "503:3", "200"]
    job_id = submit_and_cancel(service, receiver.url("/busy"))
    event = settled(service, job_id, attempts=3)
    assert event["status"] == "delivered"
    assert [a["retry_in_seconds"] for a in event["attempts"]] == [2.0, 3.0, None]
    times = [r.at for r in receiver.on("/busy")]
    assert times[1] - times[0] >= 2.0
    assert times[2] - times[1] >= 3.0


def test_a_receiver_that_never_answers_is_given_up_and_the_job_is_unaffected(
    service: Service,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/nobody-listens"
    job_id = submit_and_cancel(service, dead)
    event = settled(service, job_id, attempts=4)
    assert event["status"] == "failed"
    assert len(event["attempts"]) == 4  # the first try and the schedule's three retries
    assert "retries exhausted" in event["attempts"][-1]["error"]
    assert all("ConnectError" in a["error"] for a in event["attempts"])
    job = httpx.get(f"{service.url}/jobs/{job_id}").json()
    assert job["status"] == "cancelled"


def test_redeliver_sends_the_final_event_again_with_the_same_id(
    service: Service, receiver: Receiver
) -> None:
    receiver.scripts["/again"] = ["200"]
    job_id = submit_and_cancel(service, receiver.url("/again"))
    first = settled(service, job_id, attempts=1)
    too_soon = httpx.post(f"{service.url}/jobs/{job_id}/webhooks/redeliver")
    assert too_soon.status_code == 429, too_soon.text  # at most one per 10 s per event
    time.sleep(float(too_soon.headers["retry-after"]))
    response = httpx.post(f"{service.url}/jobs/{job_id}/webhooks/redeliver")
    assert response.status_code == 202, response.text
    wait_for(lambda: len(receiver.on("/again")) == 2, 30, "the redelivery")
    assert [r.headers["webhook-id"] for r in receiver.on("/again")] == [first["id"]] * 2
    assert len(settled(service, job_id, attempts=2)["attempts"]) == 2


def test_redeliver_without_a_webhook_is_409(service: Service) -> None:
    job = httpx.post(f"{service.url}/jobs", files={"file": ("a.jpg", JPEG)}).json()
    response = httpx.post(f"{service.url}/jobs/{job['id']}/webhooks/redeliver")
    assert response.status_code == 409
    assert "no final webhook event" in response.json()["error"]["message"]


def test_refused_targets_never_reach_the_network(service: Service, tmp_path: Path) -> None:
    # The loopback network is allowed for this service; other private ranges are not.
    response = httpx.post(
        f"{service.url}/jobs",
        files={"file": ("a.jpg", JPEG)},
        data={"webhook_url": "http://192.168.1.10/hook"},
    )
    assert response.status_code == 422
    assert "192.168.1.10 is a private address" in response.json()["error"]["message"]
