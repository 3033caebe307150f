"""One tenant's broken item never stalls another's: real API and worker processes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.processes import Service, running_api
from tests.conftest import holdout_sample, zip_bytes

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def api_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The API on embedded defaults; each test starts the worker when its stage is set."""
    data_dir = tmp_path_factory.mktemp("isolation")
    with running_api(data_dir, KEEP_UPLOADS="true") as service:
        yield service


def test_an_item_whose_fetch_raises_an_unexpected_error_fails_alone(
    api_only: Service, train_dir: Path
) -> None:
    photos = [image.path for image in holdout_sample(train_dir, 1)[:3]]
    with api_only.client() as client:
        response = client.post(
            "/jobs",
            files={"file": ("a.zip", zip_bytes({p.name: p.read_bytes() for p in photos[:2]}))},
        )
        assert response.status_code == 202, response.text
        broken_job = response.json()["id"]
        other = client.post("/jobs", files={"file": (photos[2].name, photos[2].read_bytes())})
        other_job = other.json()["id"]
        first_id = client.get(f"/jobs/{broken_job}/results").json()["items"][0]["id"]

    # The first image's stored upload turns into something that is not a file: reading it
    # raises IsADirectoryError, which no image-specific handler expects.
    first = api_only.data_dir / "uploads" / broken_job / first_id
    first.unlink()
    first.mkdir()

    worker = api_only.start_worker()
    try:
        broken = api_only.wait_job(broken_job, timeout=120)
        finished = api_only.wait_job(other_job, timeout=120)
    finally:
        worker.stop()
        shutil.rmtree(first)
    assert finished["status"] == "succeeded", api_only.logs()
    assert (broken["status"], broken["succeeded"], broken["failed"]) == (
        "partially_succeeded",
        1,
        1,
    )
    with api_only.client() as client:
        items = client.get(f"/jobs/{broken_job}/results").json()["items"]
    assert "IsADirectoryError" in items[0]["error"]
    assert items[1]["status"] == "succeeded"
