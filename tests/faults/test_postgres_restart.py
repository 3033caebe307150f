"""Fault: PostgreSQL stopped and started again while the API takes uploads.

Proves that requests during the outage get a clear 503 and leave nothing behind
(no job row, no stored file), and that the same API process, never restarted,
takes uploads again once the database is back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from shared.db.models import Item, Job
from testkit.processes import Service, running_api
from tests.conftest import image_bytes, zip_bytes
from tests.faults.servers import PrivatePostgres, private_postgres

ARCHIVE = zip_bytes({f"{i}.png": image_bytes(colour=(i, 80, 160)) for i in range(5)})


@pytest.fixture
def database() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


@pytest.fixture
def service(database: PrivatePostgres, tmp_path: Path) -> Iterator[Service]:
    with running_api(tmp_path, DATABASE_URL=database.url) as service:  # embedded broker
        yield service


def stored_folders(service: Service) -> set[str]:
    uploads = service.data_dir / "uploads"
    return {p.name for p in uploads.iterdir()} if uploads.is_dir() else set()


def test_uploads_during_an_outage_get_503_and_leave_nothing(
    service: Service, database: PrivatePostgres
) -> None:
    with service.client() as client:
        before = client.post("/jobs", files={"file": ("a.zip", ARCHIVE)})
        assert before.status_code == 202, before.text

        database.stop()
        for _ in range(3):
            response = client.post("/jobs", files={"file": ("a.zip", ARCHIVE)})
            assert response.status_code == 503, response.text
            assert response.json()["error"] == {
                "code": "database_unavailable",
                "message": "the database is unavailable; retry",
            }
        assert client.get(f"/jobs/{before.json()['id']}").status_code == 503
        assert client.get("/readyz").status_code == 503
        assert stored_folders(service) == {before.json()["id"]}  # nothing half-written

        database.start()
        after = client.post("/jobs", files={"file": ("a.zip", ARCHIVE)})
        assert after.status_code == 202, after.text  # same API process, new connections
        assert client.get("/readyz").json()["checks"]["database"] == "ok"  # no worker runs here
        listed = {job["id"] for job in client.get("/jobs").json()["items"]}

    ids = {before.json()["id"], after.json()["id"]}
    assert listed == ids
    assert stored_folders(service) == ids
    engine = create_engine(database.url)
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Job)) == 2
        assert connection.scalar(select(func.count()).select_from(Item)) == 10
    engine.dispose()
