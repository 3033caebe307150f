"""Where ../shared lives, and the real Postgres and Redis the tests and benchmarks use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.settings import PROJECT_ROOT

SHARED_DIR = Path(os.environ.get("INTEL_SHARED_DIR", PROJECT_ROOT.parent / "shared")).resolve()
BASE_WEIGHTS_FILE = SHARED_DIR / "models" / "xception_imagenet_notop.weights.h5"
TRAIN_DIR = SHARED_DIR / "data" / "intel" / "train"

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/14")


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty database on the real Postgres server; its absence fails the run."""
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    name = f"intel_test_{uuid.uuid4().hex[:10]}"
    admin = make_url(PG_ADMIN_URL)
    try:
        connection = psycopg.connect(
            host=admin.host,
            port=admin.port or 5432,
            user=admin.username,
            password=admin.password,
            dbname=admin.database,
            autocommit=True,
            connect_timeout=5,
        )
    except psycopg.OperationalError as exc:
        raise RuntimeError(f"PostgreSQL is required at {PG_ADMIN_URL}: {exc}") from exc
    with connection:
        connection.execute(f'CREATE DATABASE "{name}"')
        try:
            yield admin.set(drivername="postgresql+psycopg", database=name).render_as_string(
                hide_password=False
            )
        finally:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def idle_in_transaction(database_url: str, for_seconds: float = 3.0) -> int:
    """Connections to the service's database that have held a transaction open, doing
    nothing, for at least `for_seconds`.

    A request between two statements of its transaction is idle for a moment; one
    that holds a transaction while its client does not read stays idle. Only the
    second is counted, so a busy machine does not read as a leak.
    """
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    with psycopg.connect(
        host=url.host, port=url.port or 5432, user=url.username, dbname="postgres"
    ) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = %s AND state = 'idle in transaction' "
            "AND state_change < now() - make_interval(secs => %s)",
            (url.database, for_seconds),
        ).fetchone()
    return int(row[0]) if row else 0
