"""A new job of a finished job's failed items: `POST /jobs/{id}/retry`.

Workers keep the stored file of an item that failed (a decode past its deadline,
an image that crashed its worker every time, a storage error) until its job
expires, so it can run again. Items refused at upload (not an image, too large)
have no stored file: they would fail the same way, and stay out. The retry copies
the files under its own job's prefix, so deleting or expiring the original does
not take them away, and runs on the model version new jobs get now.
"""

from __future__ import annotations

from sqlalchemy import select

from shared import outbox
from shared.db.models import Item, ItemStatus, Job, JobStatus, new_id
from shared.errors import Conflict
from shared.jobs.intake import StagedItem, storage_prefix
from shared.jobs.records import create_job, get_job
from shared.jobs.versions import pin_version
from shared.settings import Settings
from shared.storage import Storage
from shared.unit_of_work import UnitOfWork, on_rollback


def retry_failed(
    session: UnitOfWork, storage: Storage, settings: Settings, job_id: str, owner: str | None
) -> Job:
    """Add the retry job and its message; the caller commits. Conflict when nothing can run.

    The write transaction starts first (it reads what it copies); on SQLite that
    holds the write lock while the failed items' files are copied, which is quick
    for local files and a server-side copy on S3.
    """
    session.begin_write()
    original = get_job(session, job_id, owner)
    if not JobStatus(original.status).is_final:
        raise Conflict(f"job {job_id} is still {original.status}: retry it once it has ended")
    failed = list(
        session.scalars(
            select(Item)
            .where(Item.job_id == job_id, Item.status == ItemStatus.FAILED)
            .order_by(Item.position)
        )
    )
    if not failed:
        raise Conflict(f"job {job_id} has no failed items to retry")
    runnable = [
        item
        for item in failed
        if item.source_url or (item.storage_key and storage.exists(item.storage_key))
    ]
    if not runnable:
        raise Conflict(
            f"none of job {job_id}'s {len(failed)} failed item(s) can run again: they were "
            "refused at upload (their reasons are in the results) and would fail the same way"
        )
    retry_id = new_id()
    on_rollback(session, lambda: storage.delete_prefix(storage_prefix(retry_id)))
    staged = [_copied(storage, item, retry_id, position) for position, item in enumerate(runnable)]
    job = create_job(
        session,
        retry_id,
        staged,
        owner_id=original.owner_id,
        webhook_url=original.webhook_url,
        webhook_events=list(original.webhook_events or []),
        metadata=original.client_metadata,
        model_version=pin_version(session, None, settings),
        retry_of=original.id,
    )
    outbox.add_job(session, retry_id)
    return job


def _copied(storage: Storage, item: Item, job_id: str, position: int) -> StagedItem:
    """The item again, in the retry job: its file copied, or its reference fetched anew."""
    item_id = new_id()
    key = None
    if item.source_url is None:
        assert item.storage_key is not None
        key = f"{storage_prefix(job_id)}/{item_id}"
        storage.copy(item.storage_key, key)
    return StagedItem(
        item_id,
        position,
        item.filename,
        item.size_bytes,
        item.sha256,
        key,
        None,
        source_url=item.source_url,
        custom_id=item.custom_id,
    )
