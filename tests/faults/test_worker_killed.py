"""Fault: a worker SIGKILLed in the middle of a batch.

Proves that the items it held are not lost: after REQUEUE_AFTER_SECONDS the
next worker's reconciler puts them back in the queue, every item of the job ends
with exactly one result, and the job ends with the right status.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shared.training.dataset import list_labelled_images
from testkit.processes import Service, running_api, wait_for
from tests.conftest import fresh_postgres_database, zip_bytes

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def service(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("redelivery")
    # Earlier modules' APIs leave messages for their own jobs in this shared database; a
    # worker taking one would claim this test's items before the reconciler is needed.
    redis.Redis.from_url(redis_url).flushdb()
    with (
        fresh_postgres_database() as database_url,
        running_api(
            data_dir, DATABASE_URL=database_url, REDIS_URL=redis_url, REQUEUE_AFTER_SECONDS="4"
        ) as service,
    ):
        yield service


def test_sigkill_mid_batch_then_a_new_worker_finishes_every_item_once(
    service: Service, train_dir: Path
) -> None:
    images = list_labelled_images(train_dir)[:40]
    archive = zip_bytes(
        {f"{i:02d}-{image.path.name}": image.path.read_bytes() for i, image in enumerate(images)}
    )
    first = service.start_worker()
    with service.client() as client:
        job_id = client.post("/jobs", files={"file": ("batch.zip", archive)}).json()["id"]
        wait_for(lambda: client.get(f"/jobs/{job_id}").json()["succeeded"] >= 8, 120, "a batch")
        first.stop(signal.SIGKILL)
        at_kill = client.get(f"/jobs/{job_id}").json()
        assert at_kill["status"] == "running"
        assert at_kill["succeeded"] < 40  # killed with work left

        second = service.start_worker()
        job = service.wait_job(job_id, timeout=180)
        items = client.get(f"/jobs/{job_id}/results", params={"limit": 1000}).json()["items"]
    assert job["status"] == "succeeded", service.logs()
    assert (job["total"], job["succeeded"], job["failed"]) == (40, 40, 0)
    assert len(items) == 40
    assert len({item["id"] for item in items}) == len({item["filename"] for item in items}) == 40
    assert all(item["status"] == "succeeded" and item["class"] for item in items)
    assert f"reconciler enqueued 1 job(s) again: {job_id}" in second.output()
