"""Fault: Redis restarted, with nothing kept on disk, while jobs wait in its queue.

Proves that the database, not the broker, holds the work: the messages for a
240-image job (and for a job submitted while Redis was down) are gone, yet the
worker's reconciler finds the items still queued after REQUEUE_AFTER_SECONDS,
enqueues them again, and every item ends with exactly one result. The same
worker then applies retention: the finished jobs, their items and their stored
files are deleted once RETENTION_SECONDS have passed.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image
from sqlalchemy import create_engine, func, select

from shared.db.models import Item, Job
from testkit.processes import Service, running_api, wait_for
from tests.conftest import fresh_postgres_database, zip_bytes
from tests.faults.servers import PrivateRedis, private_redis

pytestmark = pytest.mark.model

RETENTION_SECONDS = 10


@pytest.fixture
def broker() -> Iterator[PrivateRedis]:
    with private_redis() as server:
        yield server


@pytest.fixture
def service(broker: PrivateRedis, tmp_path: Path) -> Iterator[Service]:
    with (
        fresh_postgres_database() as database_url,
        running_api(
            tmp_path,
            DATABASE_URL=database_url,
            REDIS_URL=broker.url,
            REQUEUE_AFTER_SECONDS="3",
            # 3 s is shorter than a claimed batch may wait here, so live items are taken back
            # now and then; how often an item may be is another test's subject.
            MAX_ITEM_ATTEMPTS="50",
            RETENTION_SECONDS=str(RETENTION_SECONDS),
            SWEEP_INTERVAL_SECONDS="1",
            KEEP_UPLOADS="true",
        ) as service,
    ):
        yield service


def distinct_images(count: int, copies: int) -> dict[str, bytes]:
    """`count * copies` files; repeats are settled from stored results, which keeps this quick."""
    entries = {}
    for index in range(count):
        buffer = io.BytesIO()
        Image.new("RGB", (96, 96), (index * 10 % 256, 255 - index * 7 % 256, 90)).save(
            buffer, format="JPEG"
        )
        for copy in range(copies):
            entries[f"scene-{index:03d}-{copy}.jpg"] = buffer.getvalue()
    return entries


def queue_length(url: str) -> int:
    return int(redis.Redis.from_url(url).llen("classify"))


def test_jobs_queued_across_a_redis_restart_all_finish(
    service: Service, broker: PrivateRedis
) -> None:
    database = create_engine(service.env["DATABASE_URL"])
    with service.client() as client:
        big = client.post("/jobs", files={"file": ("big.zip", zip_bytes(distinct_images(24, 10)))})
        assert big.status_code == 202, big.text
        assert queue_length(broker.url) == 1

        broker.stop()  # the message is lost with it
        during = client.post(
            "/jobs", files={"file": ("more.zip", zip_bytes(distinct_images(8, 5)))}
        )
        assert during.status_code == 202, during.text  # the job is committed; the enqueue failed
        broker.start()
        assert queue_length(broker.url) == 0

        worker = service.start_worker()
        uploads = service.data_dir / "uploads"
        totals = {big.json()["id"]: 240, during.json()["id"]: 40}
        checked: set[str] = set()

        def check_finished_jobs() -> bool:
            # Each job is checked as soon as it ends: retention deletes it soon after.
            for job_id, total in totals.items():
                job = client.get(f"/jobs/{job_id}").json() if job_id not in checked else None
                if job is None or job["status"] in {"queued", "running"}:
                    continue
                assert job["status"] == "succeeded", service.logs()
                assert (job["total"], job["succeeded"], job["failed"]) == (total, total, 0)
                items: list[dict[str, Any]] = client.get(
                    f"/jobs/{job_id}/results", params={"limit": 1000}
                ).json()["items"]
                assert len({item["id"] for item in items}) == total
                assert all(item["status"] == "succeeded" and item["class"] for item in items)
                assert (uploads / job_id).is_dir()  # KEEP_UPLOADS: retention must remove them
                checked.add(job_id)
            return checked == set(totals)

        wait_for(check_finished_jobs, 240, "both jobs", interval=0.2)
        assert "reconciler enqueued" in worker.output()

        # Retention, applied by the same worker: nothing of a finished job outlives it.
        jobs = list(totals)
        for job_id in jobs:
            wait_for(
                lambda job_id=job_id: client.get(f"/jobs/{job_id}").status_code == 404,
                RETENTION_SECONDS + 30,
                "retention",
            )
            # Rows go first, files right after the commit (never files of a live job).
            wait_for(lambda job_id=job_id: not (uploads / job_id).exists(), 10, "its files")
    with database.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Item)) == 0
        assert connection.scalar(select(func.count()).select_from(Job)) == 0
    database.dispose()
