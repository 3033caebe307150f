"""`Idempotency-Key` on job creation: a retried request gets the job the first one made.

The key is remembered with a digest of the request (every file's name and bytes,
and the job's fields in a canonical form), in the transaction that creates the job, so a key can
never point at a job that was not committed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete

from shared.db.models import IdempotencyKey, Job, utcnow
from shared.errors import Conflict, InvalidInput
from shared.jobs.intake import Upload
from shared.unit_of_work import UnitOfWork

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class IdempotencyRequest:
    owner: str  # the API key's id, or "" on a server without keys
    key: str
    request_sha256: str


def request_digest(uploads: list[Upload], fields: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for upload in uploads:
        digest.update(b"file\0" + upload.filename.encode() + b"\0")
        upload.stream.seek(0)
        while chunk := upload.stream.read(1 << 20):
            digest.update(chunk)
        upload.stream.seek(0)
        digest.update(b"\0")
    for name in sorted(fields):
        digest.update(f"field\0{name}\0{fields[name]}\0".encode())
    return digest.hexdigest()


def idempotency_request(
    key: str | None, owner: str | None, uploads: list[Upload], fields: dict[str, str]
) -> IdempotencyRequest | None:
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable() or not key.isascii():
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters"
        )
    return IdempotencyRequest(owner or "", key, request_digest(uploads, fields))


def earlier_job(session: UnitOfWork, request: IdempotencyRequest) -> Job | None:
    """The job this key already made, None if it is new; Conflict if it made another request's."""
    row = session.get(IdempotencyKey, (request.owner, request.key))
    if row is None:
        return None
    if row.request_sha256 != request.request_sha256:
        raise Conflict(
            "this Idempotency-Key was already used with a different request "
            f"(job {row.job_id}); use a new key for a new request"
        )
    job = session.get(Job, row.job_id)
    if job is None:
        raise Conflict(
            f"the job this Idempotency-Key created ({row.job_id}) has been deleted; "
            "use a new key to submit again"
        )
    return job


def remember(session: UnitOfWork, request: IdempotencyRequest, job_id: str) -> None:
    session.add(
        IdempotencyKey(
            owner=request.owner,
            key=request.key,
            request_sha256=request.request_sha256,
            job_id=job_id,
            created_at=utcnow(),
        )
    )


def forget_expired(session: UnitOfWork, ttl_seconds: float, now: datetime | None = None) -> int:
    cutoff = (now or utcnow()) - timedelta(seconds=ttl_seconds)
    deleted = session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff))
    return int(deleted.rowcount or 0)  # type: ignore[attr-defined]
