"""Operations commands: migrate, sweep, and the healthchecks' `alive`."""

from __future__ import annotations

from typing import Annotated

import typer

from intel_classifier.cli.app import app
from shared.settings import get_settings


@app.command()
def migrate() -> None:
    """Apply the database migrations (DATABASE_URL)."""
    from shared.db.migrate import upgrade

    url = get_settings().resolved_database_url
    upgrade(url)
    typer.echo(f"database at head: {redacted(url)}")


@app.command()
def sweep() -> None:
    """Delete jobs past RETENTION_SECONDS and stored files with no job (workers do this too)."""
    from shared.storage import open_storage
    from shared.unit_of_work import UnitOfWorkFactory
    from worker.maintenance import sweep as sweep_expired

    settings = get_settings()
    storage = open_storage(settings.resolved_storage_url)
    report = sweep_expired(settings, UnitOfWorkFactory(settings), storage)
    typer.echo(
        f"deleted {report.jobs} expired job(s), {report.orphans} orphaned upload folder(s), "
        f"{report.idempotency_keys} idempotency key(s), {report.batches} batch record(s)"
    )


@app.command()
def alive(
    role: Annotated[str, typer.Option(help="classify or webhooks")] = "classify",
) -> None:
    """Exit 0 if a ROLE worker on this host beat within WORKER_STALE_SECONDS (healthchecks)."""
    import socket

    from shared.heartbeats import alive_on_host
    from shared.unit_of_work import UnitOfWorkFactory

    settings = get_settings()
    with UnitOfWorkFactory(settings).scope(write=False) as session:
        fine = alive_on_host(session, role, socket.gethostname(), settings.worker_stale_seconds)
    if not fine:
        typer.echo(f"no {role} worker on this host beat in {settings.worker_stale_seconds:g}s")
        raise typer.Exit(1)
    typer.echo("alive")


def redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
