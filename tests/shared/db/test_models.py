"""The models and the migrations agree, on SQLite and Postgres."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from shared.db.migrate import downgrade, upgrade
from shared.db.models import (
    Base,
)
from shared.db.session import engine_for
from tests.shared import database as db


def test_migration_matches_the_models_and_round_trips(database: str) -> None:
    engine = engine_for(database)
    assert set(inspect(engine).get_table_names()) >= db.TABLES
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
    downgrade(database)
    engine.dispose()
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(database)
    assert set(inspect(engine).get_table_names()) >= db.TABLES
