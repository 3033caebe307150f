"""Chaos soak: two APIs and two workers on Redis + Postgres, killed and restarted under load.

1,000 images in 100 jobs (a few of them break decoding); a worker is SIGKILLed
every 20 s and started again, as a supervisor would; Redis restarts once,
losing its queue. At the end every item has ended exactly once (succeeded, or
failed with its reason), no job is left running, the job counts add up and
/metrics agrees with the database. Run with `make soak` (about 5 minutes here).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, func, select

from shared.db.models import Item
from shared.training.dataset import list_labelled_images
from testkit.processes import Process, Service, free_port, service_env
from tests.conftest import fresh_postgres_database, zip_bytes
from tests.faults.servers import PrivateRedis, private_redis

pytestmark = [pytest.mark.model, pytest.mark.soak]

JOBS, PER_JOB = 100, 10
KILL_EVERY_SECONDS = 20
BROKEN = 8  # truncated or corrupted JPEGs spread over the jobs


@pytest.fixture
def broker() -> Iterator[PrivateRedis]:
    with private_redis() as server:
        yield server


def _images(train_dir: Path) -> list[tuple[str, bytes]]:
    every = list_labelled_images(train_dir)
    chosen = every[:: len(every) // (JOBS * PER_JOB)][: JOBS * PER_JOB]
    files = [
        (f"{i:04d}-{image.path.name}", image.path.read_bytes()) for i, image in enumerate(chosen)
    ]
    for n in range(BROKEN):
        index = n * (len(files) // BROKEN) + 3
        name, data = files[index]
        if n % 2:
            broken, kind = data[: len(data) // 3], "truncated"
        else:  # corrupt scan data: Pillow may or may not get through it
            broken, kind = data[:600] + bytes(range(256)) * 8 + data[600 + 2048 :], "corrupt"
        files[index] = (name.replace(".jpg", f"-{kind}.jpg"), broken)
    return files


def _metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_chaos_soak(broker: PrivateRedis, tmp_path: Path, train_dir: Path) -> None:
    files = _images(train_dir)
    with fresh_postgres_database() as database_url:
        env = service_env(
            tmp_path,
            DATABASE_URL=database_url,
            REDIS_URL=broker.url,
            REQUEUE_AFTER_SECONDS="15",
            HEARTBEAT_INTERVAL_SECONDS="2",
        )
        apis = [Service(env, tmp_path, free_port()) for _ in range(2)]
        apis[0].migrate()
        workers: list[Process] = []
        try:
            for api in apis:
                api.start_api()
            workers = [apis[0].spawn("worker", "worker") for _ in range(2)]
            started = time.monotonic()
            job_ids = _submit(apis, files)
            submitted_in = time.monotonic() - started
            kills, redis_restarted = _disturb_until_done(apis, workers, broker, job_ids)
            finished_in = time.monotonic() - started
            _check(apis, database_url, job_ids, len(files))
        finally:
            for process in workers:
                process.stop(signal.SIGKILL)
            for api in apis:
                api.stop()
    print(
        f"\nchaos soak: {len(files)} images in {JOBS} jobs ({BROKEN} broken); submitted in "
        f"{submitted_in:.0f}s, all ended after {finished_in:.0f}s; {kills} worker SIGKILLs, "
        f"Redis restarted: {redis_restarted}"
    )


def _submit(apis: list[Service], files: list[tuple[str, bytes]]) -> list[str]:
    job_ids = []
    clients = [api.client() for api in apis]
    try:
        for j in range(JOBS):
            chunk = dict(files[j * PER_JOB : (j + 1) * PER_JOB])
            response = clients[j % 2].post("/jobs", files={"file": (f"{j}.zip", zip_bytes(chunk))})
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["id"])
    finally:
        for client in clients:
            client.close()
    return job_ids


def _disturb_until_done(
    apis: list[Service], workers: list[Process], broker: PrivateRedis, job_ids: list[str]
) -> tuple[int, bool]:
    kills, redis_restarted = 0, False
    next_kill = time.monotonic() + KILL_EVERY_SECONDS
    deadline = time.monotonic() + 900
    with apis[0].client() as client:
        while time.monotonic() < deadline:
            pending = [
                job_id
                for job_id in job_ids
                if client.get(f"/jobs/{job_id}").json()["status"] in {"queued", "running"}
            ]
            if not pending:
                return kills, redis_restarted
            if not redis_restarted and time.monotonic() > next_kill - KILL_EVERY_SECONDS / 2:
                broker.stop()  # its queue and pending marks are lost
                broker.start()
                redis_restarted = True
            if time.monotonic() >= next_kill:
                victim = workers[kills % len(workers)]
                victim.stop(signal.SIGKILL)
                workers[kills % len(workers)] = apis[0].spawn("worker", "worker")
                kills += 1
                next_kill = time.monotonic() + KILL_EVERY_SECONDS
            time.sleep(1)
    raise AssertionError(f"jobs still unfinished after 15 minutes:\n{apis[0].logs()}")


def _check(apis: list[Service], database_url: str, job_ids: list[str], total: int) -> None:
    with apis[1].client() as client:
        jobs: list[dict[str, Any]] = [client.get(f"/jobs/{job_id}").json() for job_id in job_ids]
        items = [
            item
            for job_id in job_ids
            for item in client.get(f"/jobs/{job_id}/results", params={"limit": 100}).json()["items"]
        ]
    assert len(items) == len({item["id"] for item in items}) == total
    assert {item["status"] for item in items} <= {"succeeded", "failed"}
    failed = [item for item in items if item["status"] == "failed"]
    assert all(item["error"] for item in failed)
    truncated = [item for item in items if "-truncated" in item["filename"]]
    assert len(truncated) == BROKEN // 2
    assert all(item["status"] == "failed" for item in truncated)
    assert all(item["class"] for item in items if item["status"] == "succeeded")
    assert all(job["status"] not in {"queued", "running"} for job in jobs)
    for job in jobs:
        assert job["succeeded"] + job["failed"] + job["skipped"] == job["total"] == PER_JOB

    engine = create_engine(database_url)
    with engine.connect() as connection:
        by_status = dict(
            connection.execute(select(Item.status, func.count()).group_by(Item.status)).all()
        )
    engine.dispose()
    for api in apis:  # every API process reports the same, database-kept counters
        metrics = _metrics(api.url)
        for status in ("succeeded", "failed"):
            counted = metrics.get(("intel_items_finished_total", (("status", status),)), 0.0)
            assert counted == by_status.get(status, 0), (status, counted, by_status)
        assert metrics[("intel_queue_depth", ())] == 0
