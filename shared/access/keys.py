"""API keys: made, listed and revoked from the CLI; only their SHA-256 is stored.

A key reads `ick_<prefix>_<secret>`. The prefix is stored in the clear to find
the row (and to name the key in `keys list`); the whole key is compared by digest.
Keys carry 192 random bits, so a plain SHA-256 is enough: there is no password
to guess that a slow hash would protect.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import or_, select

from shared.db.models import ApiKey, utcnow
from shared.errors import InvalidInput, NotFound, Unauthorized
from shared.unit_of_work import UnitOfWork

SCHEME = "ick"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


MAX_WEIGHT = 1000


def create_key(
    session: UnitOfWork, name: str, weight: int = 1, admin: bool = False
) -> tuple[ApiKey, str]:
    """A new key row and the key itself, which is shown once and never stored.

    `weight` is the key's share of the workers against other keys with work waiting;
    an `admin` key may also read every key's usage.
    """
    name = name.strip()
    if not name or len(name) > 100:
        raise InvalidInput("a key's name must be 1 to 100 characters")
    if not 1 <= weight <= MAX_WEIGHT:
        raise InvalidInput(f"a key's weight must be 1 to {MAX_WEIGHT}")
    prefix = f"{SCHEME}_{secrets.token_hex(4)}"
    key = f"{prefix}_{secrets.token_urlsafe(24)}"
    row = ApiKey(
        name=name,
        prefix=prefix,
        secret_sha256=digest(key),
        created_at=utcnow(),
        weight=weight,
        admin=admin,
    )
    session.add(row)
    session.flush()
    return row, key


def list_keys(session: UnitOfWork) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(session: UnitOfWork, ident: str) -> ApiKey:
    """Revoke by id, prefix or name; a name shared by several keys is refused as ambiguous."""
    rows = list(
        session.scalars(
            select(ApiKey).where(
                or_(ApiKey.id == ident, ApiKey.prefix == ident, ApiKey.name == ident)
            )
        )
    )
    if not rows:
        raise NotFound(f"no API key with id, prefix or name {ident!r}")
    if len(rows) > 1:
        raise InvalidInput(f"{len(rows)} keys are named {ident!r}; revoke one by its prefix")
    row = rows[0]
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def authenticate(session: UnitOfWork, key: str) -> ApiKey:
    """The live key `key` is, or Unauthorized."""
    scheme_part, prefix_part, secret = [*key.split("_", 2), "", ""][:3]
    prefix = f"{scheme_part}_{prefix_part}"
    row = (
        session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).one_or_none()
        if secret
        else None
    )
    # Compare digests even for an unknown prefix, so timing does not tell which prefixes exist.
    expected = row.secret_sha256 if row is not None else digest("")
    if not hmac.compare_digest(expected, digest(key)) or row is None:
        raise Unauthorized("the API key is not valid")
    if row.revoked_at is not None:
        raise Unauthorized("the API key has been revoked")
    return row
