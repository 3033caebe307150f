"""A rolling model upgrade: new workers' version takes new jobs, old jobs stay on theirs.

Two classify workers serve two models: the shipped one, then the stand-in
(`testkit.stand_in`, a second real artifact of another version): what a rollout
from one model to another looks like, without a second model to train.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import create_engine, select

from shared.db.models import Item
from shared.training.dataset import list_labelled_images
from testkit.processes import Service, running_api, wait_for
from tests.conftest import fresh_postgres_database, zip_bytes

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def cluster(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Service, str]]:
    redis.Redis.from_url(redis_url).flushdb()
    with (
        fresh_postgres_database() as database_url,
        running_api(
            tmp_path_factory.mktemp("versions"),
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            HEARTBEAT_INTERVAL_SECONDS="1",
            WORKER_STALE_SECONDS="5",
        ) as service,
    ):
        yield service, database_url


def models(client: httpx.Client) -> dict[str, Any]:
    body: dict[str, Any] = client.get("/models").json()
    return body


def item_versions(database_url: str, job_id: str) -> set[str | None]:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as connection:
        rows = connection.execute(select(Item.model_version).where(Item.job_id == job_id))
        versions = {row[0] for row in rows}
    engine.dispose()
    return versions


def submit(client: httpx.Client, paths: list[Path]) -> str:
    archive = zip_bytes({path.name: path.read_bytes() for path in paths})
    response = client.post("/jobs", files={"file": ("photos.zip", archive)})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_a_rolling_upgrade_moves_new_jobs_and_keeps_each_job_on_one_version(
    cluster: tuple[Service, str], train_dir: Path, stand_in_model: Path
) -> None:
    service, database_url = cluster
    paths = [image.path for image in list_labelled_images(train_dir)[-60:]]
    with service.client() as client:
        old_worker = service.start_worker()
        [old] = wait_for(lambda: models(client)["items"], 60, "the old version live")
        first = submit(client, paths[:30])  # pinned to the old version
        # Start workers of the new version: new jobs move to it once one is live.
        service.start_worker(MODEL_PATH=str(stand_in_model))

        def both_live() -> dict[str, Any] | None:
            listed = models(client)
            return listed if len(listed["items"]) == 2 else None

        live = wait_for(both_live, 300, "both versions live")
        new = next(m for m in live["items"] if m["version"] != old["version"])
        assert new["version"].startswith("standin")
        assert live["new_jobs_get"] == new["version"]
        second = submit(client, paths[30:])
        # Old jobs drain on the old workers; then the old workers stop.
        for job_id, version in ((first, old["version"]), (second, new["version"])):
            job = service.wait_job(job_id, timeout=300)
            assert (job["status"], job["model_version"]) == ("succeeded", version)
            assert item_versions(database_url, job_id) == {version}  # never mixed
        old_worker.stop()
        wait_for(lambda: len(models(client)["items"]) == 1, 30, "the old version gone")
        refused = client.post(
            "/jobs",
            files={"file": ("a.jpg", paths[0].read_bytes())},
            data={"model": old["version"]},
        )
        assert refused.status_code == 422, refused.text
