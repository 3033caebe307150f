"""`intel-classifier keys`: make, list and revoke API keys (stored hashed)."""

from __future__ import annotations

from typing import Annotated

import typer

from shared.access import keys as key_service
from shared.settings import get_settings
from shared.unit_of_work import UnitOfWorkFactory

keys_app = typer.Typer(help="API keys (used when AUTH_ENABLED=true).", no_args_is_help=True)


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    weight: Annotated[
        int,
        typer.Option(
            min=1,
            max=key_service.MAX_WEIGHT,
            help="Its share of the workers against other keys with work waiting.",
        ),
    ] = 1,
    admin: Annotated[
        bool, typer.Option("--admin", help="An operator's key: it may read every key's usage.")
    ] = False,
) -> None:
    """Make a key; it is printed once, on the last line, and never stored in the clear."""
    with UnitOfWorkFactory(get_settings()).scope() as session:
        row, key = key_service.create_key(session, name, weight, admin)
        role = ", admin" if row.admin else ""
        typer.echo(
            f"created key {row.prefix} ({row.name}, weight {row.weight}{role}, id {row.id}); "
            "keep it secret:",
            err=True,
        )
    typer.echo(key)


@keys_app.command("list")
def list_keys() -> None:
    """Every key: prefix, name, when it was made, and whether it is revoked."""
    with UnitOfWorkFactory(get_settings()).scope(write=False) as session:
        rows = key_service.list_keys(session)
        typer.echo(
            f"{'PREFIX':<14} {'NAME':<24} {'WEIGHT':>6} {'ADMIN':<5} {'CREATED':<20} "
            f"{'REVOKED':<20} ID"
        )
        for row in rows:
            revoked = row.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if row.revoked_at else "-"
            created = row.created_at.strftime("%Y-%m-%d %H:%M:%S")
            typer.echo(
                f"{row.prefix:<14} {row.name:<24} {row.weight:>6} {'yes' if row.admin else '-':<5} "
                f"{created:<20} {revoked:<20} "
                f"{row.id}"
            )


@keys_app.command("revoke")
def revoke(key: Annotated[str, typer.Argument(help="The key's prefix, id or name.")]) -> None:
    """Revoke a key: requests with it get 401 from now on; its jobs are kept."""
    with UnitOfWorkFactory(get_settings()).scope() as session:
        row = key_service.revoke_key(session, key)
        typer.echo(f"revoked {row.prefix} ({row.name})")
