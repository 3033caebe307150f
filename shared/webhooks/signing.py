"""Standard Webhooks signatures: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">."""

from __future__ import annotations

import base64
import hashlib
import hmac
from secrets import token_bytes

from shared.errors import InvalidInput

PREFIX = "whsec_"


def new_secret() -> str:
    """A fresh signing secret: 32 random bytes, as WEBHOOK_SECRETS takes them."""
    return PREFIX + base64.b64encode(token_bytes(32)).decode()


def secret_bytes(secret: str) -> bytes:
    if not secret.startswith(PREFIX):
        raise InvalidInput("webhook secrets must start with whsec_ (WEBHOOK_SECRETS)")
    try:
        key = base64.b64decode(secret[len(PREFIX) :] + "==", validate=False)
    except ValueError as exc:
        raise InvalidInput("a WEBHOOK_SECRETS entry is not whsec_ + base64") from exc
    if not key:
        raise InvalidInput("a WEBHOOK_SECRETS entry is empty")
    return key


def signature_header(secrets: list[str], msg_id: str, timestamp: int, body: str) -> str:
    """Every configured secret signs, so receivers can rotate from one to the next."""
    content = f"{msg_id}.{timestamp}.{body}".encode()
    signatures = []
    for secret in secrets:
        digest = hmac.new(secret_bytes(secret), content, hashlib.sha256).digest()
        signatures.append("v1," + base64.b64encode(digest).decode())
    return " ".join(signatures)
