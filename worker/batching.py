"""Classify queued items in batches that form across jobs, decoding ahead of inference."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from shared.classifier.inference import infer_batches, to_prediction
from shared.classifier.model import Classifier
from shared.classifier.preprocessing import preprocess
from shared.errors import UploadMissing
from shared.services import outbox
from shared.services.processing import (
    Claimed,
    ItemResult,
    claim_items,
    queued_count,
    record_results,
    reuse_known_results,
)
from shared.services.unit_of_work import session_scope
from shared.settings import Settings
from worker.runtime import Runtime

log = logging.getLogger(__name__)

# A task runs at most this many batches, then hands over to a new message: tasks
# stay short (well inside any visibility timeout) and jobs take turns.
MAX_BATCHES_PER_TASK = 8


def time_limits(settings: Settings) -> tuple[float, float]:
    """(soft, hard) seconds for one classify task, sized from the most images it may run.

    The soft limit ends a task whose batch hangs in the forward pass or the
    database; the hard one kills the pool child that ignores it, and the pool
    starts a fresh one. Their items stay running until the reconciler takes them
    back, and MAX_ITEM_ATTEMPTS bounds how often that happens.
    """
    most_images = MAX_BATCHES_PER_TASK * settings.inference_batch_size
    soft = most_images * settings.task_seconds_per_image + settings.decode_timeout_seconds
    return soft, soft + 30.0


def process_job(job_id: str, runtime: Runtime) -> None:
    """Run batches starting with `job_id`'s items; a job with more to do gets a fresh message.

    Each claim and each batch's results are one unit of work, committed here, the
    task's edge; the webhook events they record go out after their commit.
    """
    settings = runtime.settings
    classifier = runtime.classifier
    batch_size = settings.inference_batch_size

    def claims() -> Iterator[Claimed]:
        for _ in range(MAX_BATCHES_PER_TASK):
            claimed = _claim(job_id, batch_size, runtime)
            if not claimed:
                return
            yield from claimed

    def decode(item: Claimed) -> np.ndarray:
        if item.storage_key is None:
            raise UploadMissing(f"{item.filename!r} has no stored upload")
        data = runtime.storage.get(item.storage_key)
        return preprocess(data, item.filename, classifier.input_size, settings.max_image_pixels)

    batches = infer_batches(
        claims(),
        decode,
        classifier.predict,
        batch_size=batch_size,
        workers=settings.decode_workers,
        decode_timeout_seconds=settings.decode_timeout_seconds,
    )
    for batch in batches:
        results = [
            _result(item, output, classifier)
            for item, output in zip(batch.items, batch.outputs, strict=True)
        ]
        with session_scope(runtime.settings, sender=runtime.queue) as session:
            written = record_results(
                session,
                results,
                worker=runtime.name,
                inference_ms=batch.inference_ms,
                progress_interval_seconds=settings.webhook_progress_interval_seconds,
            )
        _delete_uploads(runtime, [item for item in batch.items if item.id in written])
        log.info(
            "batch of %d from %d job(s) in %.0f ms",
            len(batch.items),
            len({item.job_id for item in batch.items}),
            batch.inference_ms,
        )
    with session_scope(runtime.settings, write=False, sender=runtime.queue) as session:
        if queued_count(session, job_id) > 0:
            # More to do: a fresh message, so other jobs get their turn in between.
            outbox.add_job(session, job_id)


def _result(item: Claimed, output: np.ndarray | str, classifier: Classifier) -> ItemResult:
    if isinstance(output, str):
        log.warning("item failed: %s", output, extra={"job_id": item.job_id, "item_id": item.id})
        return ItemResult(item.id, item.job_id, None, None, None, output)
    prediction = to_prediction(item.filename, output, classifier.classes)
    return ItemResult(
        item.id,
        item.job_id,
        prediction.label,
        prediction.confidence,
        prediction.scores,
        None,
        model_version=classifier.version,
    )


def _claim(job_id: str, batch_size: int, runtime: Runtime) -> list[Claimed]:
    """Items for the next forward pass; repeats of known images are settled on the way."""
    to_run: list[Claimed] = []
    waited = False
    while len(to_run) < batch_size:
        fresh = _claim_once(job_id, batch_size - len(to_run), runtime)
        to_run += fresh.to_run
        if not fresh.claimed:
            wait = runtime.settings.batch_wait_ms / 1000
            if waited or not to_run or wait <= 0:
                break
            # Jobs often arrive in bursts: a short wait lets a partial batch fill up.
            time.sleep(wait)
            waited = True
    return to_run


@dataclass(frozen=True)
class _Claim:
    claimed: list[Claimed]
    to_run: list[Claimed]


def _claim_once(job_id: str, limit: int, runtime: Runtime) -> _Claim:
    """One unit of work: claim items, start their jobs, settle repeats of known images."""
    version = runtime.classifier.version
    with session_scope(runtime.settings, sender=runtime.queue) as session:
        claimed = claim_items(session, job_id, limit, version)
        reused, to_run = reuse_known_results(session, claimed, version, worker=runtime.name)
    _delete_uploads(runtime, reused)
    return _Claim(claimed, to_run)


def _delete_uploads(runtime: Runtime, items: list[Claimed]) -> None:
    if runtime.settings.keep_uploads:
        return
    for item in items:
        if item.storage_key:
            runtime.storage.delete(item.storage_key)
