"""Engines and sessions: one session per request or task, short write transactions."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session

from shared.settings import Settings

WRITE_OPTION = "intel_write_transaction"
# A pooled connection unused for this long is pinged before it is handed out: one that
# was used a moment ago is alive, and pinging it would cost a round trip per transaction.
PING_AFTER_IDLE_SECONDS = 2.0


@dataclass(frozen=True)
class ConnectionLimits:
    """Connections one process may hold (DATABASE_POOL_SIZE + DATABASE_MAX_OVERFLOW), and
    how long Postgres keeps a session whose client went silent mid-transaction."""

    size: int = 10
    overflow: int = 10
    timeout_seconds: float = 10.0
    silent_client_seconds: float = 10.0

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            settings.database_pool_size,
            settings.database_max_overflow,
            settings.database_pool_timeout_seconds,
            settings.database_silent_client_seconds,
        )


def _postgres_session_limits(silent_client_seconds: float) -> dict[str, Any]:
    """Ask the server to end a session whose client went silent holding a transaction.

    A host cut off the network (or frozen) mid-transaction keeps its row locks
    until Postgres notices it is gone, and every other host waits on them: the
    whole cluster stalls behind one partitioned worker. So the server ends a
    session idle in a transaction, or whose sent data goes unacknowledged, after
    `silent_client_seconds`; its locks go, the others carry on, and the cut-off
    host finds its transaction gone when it comes back. No transaction here waits
    on its client that long on purpose (requests and batches never hold one open
    across an upload, a decode or a forward pass). Keepalives let the client
    notice a silent server the same way.
    """
    millis = int(silent_client_seconds * 1000)
    return {
        "options": f"-c idle_in_transaction_session_timeout={millis} -c tcp_user_timeout={millis}",
        "connect_timeout": max(2, int(silent_client_seconds)),
        "tcp_user_timeout": millis,
        "keepalives": 1,
        "keepalives_idle": max(1, int(silent_client_seconds / 2)),
        "keepalives_interval": 1,
        "keepalives_count": 3,
    }


def make_engine(url: str, pool: ConnectionLimits = ConnectionLimits()) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        if parsed.drivername == "postgresql":
            url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        # A request or task holds a connection only while its transaction is open, and
        # waits at most `timeout_seconds` for one (then 503), never for as long as it likes.
        engine = create_engine(
            url,
            pool_size=pool.size,
            max_overflow=pool.overflow,
            pool_timeout=pool.timeout_seconds,
            connect_args=_postgres_session_limits(pool.silent_client_seconds),
        )
        _ping_idle_connections(engine)
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(connection: Any, _record: Any) -> None:
        # Let pysqlite leave transactions to us, so that BEGIN IMMEDIATE below takes
        # the write lock up front; WAL lets the API read while a worker writes.
        connection.isolation_level = None
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        # A deferred transaction that reads and then writes fails at once with
        # SQLITE_BUSY if another writer committed in between; write transactions
        # take the lock at BEGIN instead, so writers queue (busy_timeout) and
        # readers, which WAL never blocks, keep deferred transactions.
        immediate = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _ping_idle_connections(engine: Engine) -> None:
    """SQLAlchemy's pessimistic disconnect handling, for connections that sat idle only.

    A connection that fails its ping is discarded and the pool hands out another
    (`DisconnectionError` at checkout); one that dies between its last use and the
    next (a restart within the idle window) fails that one transaction, and the
    pool is invalidated, so the next gets a fresh connection.
    """

    @event.listens_for(engine, "checkin")
    def _returned(_connection: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _handed_out(connection: Any, record: Any, _proxy: Any) -> None:
        returned_at = record.info.get("returned_at")
        if returned_at is not None and time.monotonic() - returned_at < PING_AFTER_IDLE_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(connection)
        except Exception as exc:
            raise DisconnectionError("the pooled connection did not answer its ping") from exc
        if not alive:
            raise DisconnectionError("the pooled connection did not answer its ping")


_engines: list[Engine] = []


@lru_cache(maxsize=4)
def engine_for(url: str, pool: ConnectionLimits = ConnectionLimits()) -> Engine:
    engine = make_engine(url, pool)
    _engines.append(engine)
    return engine


def forget_inherited_connections() -> None:
    """In a forked child: drop the parent's pooled connections without closing them."""
    for engine in _engines:
        engine.dispose(close=False)


def begin_write(session: Session) -> None:
    """Start the session's transaction as a writer (on SQLite: BEGIN IMMEDIATE).

    Call it before the first statement of a transaction that reads, then writes.
    """
    if session.in_transaction():
        if session.connection().get_execution_options().get(WRITE_OPTION):
            return  # already a write transaction
        raise RuntimeError("begin_write() must come before the transaction's first statement")
    session.connection(execution_options={WRITE_OPTION: True})
