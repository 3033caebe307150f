"""The `database` fixture: each database test runs on SQLite and on Postgres."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from shared.db.migrate import upgrade
from shared.db.session import engine_for
from shared.settings import Settings
from tests.shared import database as db


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
        upgrade(url)
    else:
        url = _emptied(request.getfixturevalue("postgres_url"))
    db.SETTINGS = Settings(database_url=url)
    return url


@pytest.fixture
def postgres_database(postgres_url: str) -> str:
    """For what only Postgres does (query plans, row locks): the same empty database."""
    url = _emptied(postgres_url)
    db.SETTINGS = Settings(database_url=url)
    return url


def _emptied(url: str) -> str:
    upgrade(url)
    with engine_for(url).begin() as connection:
        connection.execute(text("UPDATE scheduler_clock SET virtual_time = 0"))
        connection.execute(
            text(
                "TRUNCATE jobs, items, batches, api_keys, idempotency_keys, metric_counters, "
                "tenant_shares, worker_heartbeats CASCADE"
            )
        )
    return url
