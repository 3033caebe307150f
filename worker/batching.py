"""Classify queued items in batches that form across jobs, decoding ahead of inference."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from shared import outbox
from shared.classifier.inference import (
    InferredBatch,
    infer_groups,
    infer_pipelined,
    to_prediction,
)
from shared.classifier.loaded import Classifier
from shared.classifier.preprocessing import preprocess
from shared.classifier.runner import Pending, Rows
from shared.errors import UploadMissing
from shared.jobs.processing import (
    Claimed,
    ItemResult,
    begin_pass,
    claim_items,
    queued_beyond,
    queued_count,
    record_results,
    reuse_known_results,
    still_held,
)
from shared.jobs.recovery import release
from shared.jobs.scheduling import HELPER_WAKE_UP, LANE_WAKE_UP, lane_waiting
from shared.settings import Settings
from worker.fetch import fetch_input
from worker.liveness import liveness, taking_work
from worker.runtime import Runtime

log = logging.getLogger(__name__)

# A task claims groups for this long, then hands over to a new message, so tasks stay
# short (well inside any visibility timeout). Each claim is fair across tenants
# whichever job's message started the task, so the bound is on time, not on groups:
# at each hand-over the engine drains (about 50 ms on the 2-core machines), 3 % of
# a task of 8 groups on a fast CPU and more on a slow one, under 1 % of one this long.
TASK_SECONDS = 8.0
# ... and at most this many groups, whatever the pace: the task's time limits are
# computed from it.
MAX_GROUPS_PER_TASK = 64
# A steady stream of /predict calls is served by task after task, each this long.
LANE_GROUPS_PER_TASK = 64
# /predict items claimed at once, and charged in the same unit of work. Each group costs
# a claim and a record whatever its size, so under a flood of calls groups of 8 spend
# half the bookkeeping of groups of 4; their rows still go to the engine one at a time.
LANE_GROUP = 8
# How often a busy worker looks for waiting /predict calls: the most a call waits
# before its claim, on top of the request it then waits for. A look asks the broker
# whether the lane's message was asked for since the last look (each call asks for it,
# `JobQueue.asked`); only then does the worker read the database.
LANE_LOOK_SECONDS = 0.05
# The database is read this often even when no call was heard of: word of one can be
# lost with the broker, and a call must not then wait for the reconciler.
LANE_READ_SECONDS = 1.0
# A group on an engine that runs requests in flight holds about this much of its
# work: what a newcomer's image can wait behind (the groups queued ahead of its own)
# is bounded in seconds, not images, on a slow CPU as on a fast one. An engine that
# runs 64 images a second or more fills a group (INFERENCE_BATCH_SIZE); one four
# times slower claims a quarter as many.
GROUP_SECONDS = 0.25
SMALLEST_GROUP = 2
# Groups queued on an engine that runs requests in flight: one runs while the
# worker records the one before and decodes the one after.
PIPELINE_DEPTH = 2
# A database step (claim, charge, record) that takes longer than this counts as stalled.
DATABASE_STEP_SECONDS = 60.0


def pass_deadline(settings: Settings) -> float:
    """The longest one forward pass of a full batch may take before the worker counts as stalled."""
    return settings.inference_batch_size * settings.task_seconds_per_image


def time_limits(settings: Settings) -> tuple[float, float]:
    """(soft, hard) seconds for one classify task: the sum of its steps' deadlines.

    Each batch may take its decode deadline (DECODE_TIMEOUT_SECONDS, from each
    decode's start) plus its pass deadline (INFERENCE_BATCH_SIZE times
    TASK_SECONDS_PER_IMAGE) plus its database steps. A task past the soft limit
    releases what it holds; the hard limit kills a pool child that ignores it.
    The leases (REQUEUE_AFTER_SECONDS) are independent of both: they run on
    while the worker meets each step's deadline, and lapse once it does not.
    """
    per_batch = (
        settings.decode_timeout_seconds + pass_deadline(settings) + 3 * DATABASE_STEP_SECONDS
    )
    soft = (MAX_GROUPS_PER_TASK + LANE_GROUPS_PER_TASK) * per_batch
    return soft, soft + 30.0


def process_job(job_id: str, runtime: Runtime) -> None:
    """Run the batches the scheduler forms for about TASK_SECONDS; then hand over.

    The message names a job only to wake a worker: what each batch holds is the
    scheduler's choice (the interactive lane, then a fair share by tenant).
    Each claim, each charge and each batch's results are one unit of work,
    committed here, the task's edge; the webhook events they record go out
    after their commit. Whatever the task still holds when it ends early (a
    time limit, a database error) is released.
    """
    settings = runtime.settings
    classifier = runtime.classifier
    pipelined = classifier.can_start  # rows go to the engine one per request
    held: set[str] = set()

    def next_size() -> int:
        return group_size(settings.inference_batch_size, pipelined, classifier.seconds_per_image())

    def claims() -> Iterator[list[Claimed]]:
        # Asked when the first batch is wanted, after the lane's first look: a waiting
        # /predict call goes to the engine without this read ahead of it.
        _call_for_help(runtime, next_size())
        budget = TaskBudget()
        while budget.another_group():
            if not taking_work():
                return  # what this task holds finishes; the rest waits, uncharged
            # A pipelined group is claimed straight into its pass, in one unit of work:
            # its decode starts as soon as it is yielded.
            claimed = _claim(next_size(), runtime, into_pass=pipelined)
            held.update(c.id for c in claimed)
            to_run = claimed if pipelined else _begin_pass(claimed, runtime)
            held.difference_update(c.id for c in claimed if c not in to_run)
            if not claimed:
                return
            if to_run:  # a group cancelled since its claim is skipped
                yield to_run

    def decode(item: Claimed) -> np.ndarray:
        if item.source_url is not None:
            data = fetch_input(item.source_url, settings)
        elif item.storage_key is None:
            raise UploadMissing(f"{item.filename!r} has no stored upload")
        else:
            data = runtime.storage.get(item.storage_key)
        return preprocess(data, item.filename, classifier.input_size, settings.max_image_pixels)

    lane_groups = 0
    # The lane's own message says a call is waiting: claim at once, with no look first.
    lane_busy = job_id == LANE_WAKE_UP
    lane_look = LaneLook(lambda: runtime.queue.asked(LANE_WAKE_UP), lambda: _lane_waiting(runtime))

    def lane() -> list[Claimed]:
        """/predict items waiting now: claimed and charged in one unit, to run at once."""
        nonlocal lane_groups, lane_busy
        if lane_groups >= LANE_GROUPS_PER_TASK or not taking_work():
            return []  # past the bound (or stopping), the lane's own messages go on
        # The loop asks whenever a group ends. After a full group more calls may wait:
        # claim straight away. Otherwise claim only once a call is seen waiting, rather
        # than take the scheduler's lock for nothing.
        if not lane_busy and not lane_look.called():
            return []
        lane_groups += 1
        claim = _claim_once(LANE_GROUP, runtime, suspects=False, lane_only=True, into_pass=True)
        lane_busy = len(claim.claimed) >= LANE_GROUP
        held.update(c.id for c in claim.to_run)  # repeats of known images were settled
        return claim.to_run

    def wanted(items: list[Claimed]) -> list[bool]:
        """Just before the engine: items of a job cancelled since the claim are not run."""
        with runtime.units.scope(write=False) as session:
            ours = still_held(session, [item.id for item in items], runtime.name)
        return [item.id in ours for item in items]

    def run(arrays: np.ndarray) -> np.ndarray:
        liveness.expect(pass_deadline(settings))
        return classifier.predict(arrays)

    def start(arrays: Rows, urgent: bool) -> Pending:
        # Two groups may be queued on the engine: both must be done within their passes.
        liveness.expect(PIPELINE_DEPTH * pass_deadline(settings))
        return classifier.start(arrays, urgent)

    on_wait = lambda: liveness.expect(settings.decode_timeout_seconds + 5)  # noqa: E731
    try:
        batches = (
            infer_pipelined(
                claims(),
                decode,
                start,
                classifier.probabilities,
                workers=settings.decode_workers,
                decode_timeout_seconds=settings.decode_timeout_seconds,
                on_wait=on_wait,
                urgent=lane,
                wanted=wanted,
                depth=PIPELINE_DEPTH,
                lane_look_seconds=LANE_LOOK_SECONDS,
            )
            if pipelined
            else infer_groups(
                claims(),
                decode,
                run,
                workers=settings.decode_workers,
                decode_timeout_seconds=settings.decode_timeout_seconds,
                on_wait=on_wait,
                urgent=lane,
            )
        )
        for batch in batches:
            liveness.expect(DATABASE_STEP_SECONDS)
            _record(batch, runtime)
            held.difference_update(item.id for item in batch.items)
        with runtime.units.scope(write=False) as session:
            if queued_count(session, job_id) > 0:
                # More to do: a fresh message, so other work gets its turn in between.
                outbox.add_job(session, job_id)
    finally:
        if held:
            _release(held, runtime)
        liveness.idle()


class LaneLook:
    """Whether a /predict call is waiting, asked whenever a busy worker's group ends.

    It looks at most every LANE_LOOK_SECONDS. Each call asks for the lane's message
    (sent or not), so a changed ask token means a call came: the database is read
    (a cheap read, no lock) to see whether one still waits, since every busy worker
    hears the same word and only one will claim it. An unchanged token means none
    came, and the database is read only every LANE_READ_SECONDS, in case word was
    lost with the broker; where the broker cannot say (None), at every look.
    """

    def __init__(
        self,
        asked: Callable[[], str | None],
        waiting: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._asked = asked
        self._waiting = waiting
        self._clock = clock
        self._heard: str | None = None  # the token at the last look
        self._next_look = self._next_read = clock()

    def called(self) -> bool:
        now = self._clock()
        if now < self._next_look:
            return False
        self._next_look = now + LANE_LOOK_SECONDS
        heard = self._asked()
        changed, self._heard = heard != self._heard, heard
        if heard is not None and not changed and now < self._next_read:
            return False
        self._next_read = now + LANE_READ_SECONDS
        return self._waiting()


class TaskBudget:
    """Whether a task may claim another group: within TASK_SECONDS and MAX_GROUPS_PER_TASK."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ends = clock() + TASK_SECONDS
        self._groups = 0

    def another_group(self) -> bool:
        if self._groups >= MAX_GROUPS_PER_TASK or self._clock() >= self._ends:
            return False
        self._groups += 1
        return True


def group_size(batch_size: int, pipelined: bool, seconds_per_image: float | None) -> int:
    """How many items the next claim takes.

    An engine that runs one batch at a time gets a full batch. One that runs one
    image per request (`pipelined`) gains no speed from a big group, and every
    image claimed ahead is one a newcomer waits behind: it claims what it runs in
    GROUP_SECONDS at its recent pace, up to a batch (half a batch before its pace
    is known). Each claim and record costs the same whatever its size: on an
    engine of 85 images a second, groups of 16 instead of 8 halved the worker's
    own CPU per image (2.1 to 1.1 ms) and took a third off the database's.
    """
    if not pipelined:
        return batch_size
    if seconds_per_image is None or seconds_per_image <= 0:
        return max(batch_size // 2, 1)
    fits = round(GROUP_SECONDS / seconds_per_image)
    return max(min(fits, batch_size), min(SMALLEST_GROUP, batch_size))


def _call_for_help(runtime: Runtime, group_size: int) -> None:
    """Wake one more worker when more waits than this one will hold at once.

    A job's message wakes one worker; this one's message (at most one waits) wakes
    the next, which calls the next in turn, until the queue is short or every
    worker is busy. Idle workers then share even a single big job.
    """
    with runtime.units.scope(write=False) as session:
        if queued_beyond(session, (PIPELINE_DEPTH + 1) * group_size):
            outbox.add_job(session, HELPER_WAKE_UP)


def _record(batch: InferredBatch[Claimed], runtime: Runtime) -> None:
    classifier = runtime.classifier
    item_ms = batch.item_ms or [batch.inference_ms / max(len(batch.items), 1)] * len(batch.items)
    results = [
        _result(item, output, classifier, ms)
        for item, output, ms in zip(batch.items, batch.outputs, item_ms, strict=True)
    ]
    with runtime.units.scope() as session:
        written = record_results(
            session,
            results,
            worker=runtime.name,
            inference_ms=batch.inference_ms,
            progress_interval_seconds=runtime.settings.webhook_progress_interval_seconds,
        )
    # A failed item keeps its file until its job expires, so POST /jobs/{id}/retry can run it.
    kept = {result.id for result in results if result.error}
    _delete_uploads(runtime, [i for i in batch.items if i.id in written and i.id not in kept])
    log.info(
        "batch of %d from %d job(s) in %.0f ms",
        len(batch.items),
        len({item.job_id for item in batch.items}),
        batch.inference_ms,
    )


def _begin_pass(claimed: list[Claimed], runtime: Runtime) -> list[Claimed]:
    """Charge the claimed items an attempt as they enter decoding; the ones still to run.

    Items of a job cancelled since the claim drop out here, unrun and uncharged.
    """
    if not claimed:
        return []
    liveness.expect(DATABASE_STEP_SECONDS)
    with runtime.units.scope() as session:
        ours = begin_pass(
            session, [c.id for c in claimed], runtime.name, runtime.settings.requeue_after_seconds
        )
    return [c for c in claimed if c.id in ours]


def _release(held: set[str], runtime: Runtime) -> None:
    try:
        with runtime.units.scope() as session:
            for job_id in release(
                session, sorted(held), runtime.name, runtime.settings.max_item_attempts
            ):
                outbox.add_job(session, job_id)
    except Exception:  # the leases lapse and the reconciler takes them back instead
        log.warning(
            "could not release %d item(s); their leases will lapse", len(held), exc_info=True
        )


def _result(
    item: Claimed, output: np.ndarray | str, classifier: Classifier, inference_ms: float
) -> ItemResult:
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
        inference_ms=inference_ms,
    )


def _claim(batch_size: int, runtime: Runtime, *, into_pass: bool = False) -> list[Claimed]:
    """Items for the next forward pass; repeats of known images are settled on the way.

    With `into_pass` they are charged as they are claimed, and a partial group does
    not wait to fill up: an engine that runs one image per request gains nothing
    from a fuller group, and items that wait must not be charged meanwhile.
    """
    to_run: list[Claimed] = []
    waited = False
    while len(to_run) < batch_size:
        liveness.expect(DATABASE_STEP_SECONDS)
        # A suspect (its worker died while it was in a pass) only starts a batch, alone.
        # The lane is not taken here: the loop serves it between requests (`lane`).
        fresh = _claim_once(
            batch_size - len(to_run), runtime, suspects=not to_run, lane=False, into_pass=into_pass
        )
        to_run += fresh.to_run
        if any(c.solo for c in fresh.claimed):
            break
        if not fresh.claimed:
            wait = runtime.settings.batch_wait_ms / 1000
            if waited or not to_run or wait <= 0 or into_pass:
                break
            # Jobs often arrive in bursts: a short wait lets a partial batch fill up.
            time.sleep(wait)
            waited = True
    return to_run


@dataclass(frozen=True)
class _Claim:
    claimed: list[Claimed]
    to_run: list[Claimed]


def _lane_waiting(runtime: Runtime) -> bool:
    with runtime.units.scope(write=False) as session:
        return lane_waiting(session, runtime.classifier.version)


def _claim_once(
    limit: int,
    runtime: Runtime,
    *,
    suspects: bool,
    lane: bool = True,
    lane_only: bool = False,
    into_pass: bool = False,
) -> _Claim:
    """One unit of work: claim items, start their jobs, settle repeats of known images."""
    settings = runtime.settings
    version = runtime.classifier.version
    with runtime.units.scope() as session:
        claimed = claim_items(
            session,
            limit,
            version,
            worker=runtime.name,
            lease_seconds=settings.requeue_after_seconds,
            cap_per_tenant=settings.max_in_flight_per_tenant,
            suspects=suspects,
            lane=lane,
            lane_only=lane_only,
            into_pass=into_pass,
        )
        reused, to_run = reuse_known_results(session, claimed, version, worker=runtime.name)
    _delete_uploads(runtime, reused)
    return _Claim(claimed, to_run)


def _delete_uploads(runtime: Runtime, items: list[Claimed]) -> None:
    if runtime.settings.keep_uploads:
        return
    for item in items:
        if item.storage_key:
            runtime.storage.delete(item.storage_key)
