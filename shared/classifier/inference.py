"""Batched inference with decoding overlapped: the path the CLI, evaluation and workers share.

Nothing about one image may end the loop for the others: any exception while
decoding an item fails that item alone, a decode that outlives its deadline is
abandoned and failed alone, and a forward pass that raises is retried on halves
of the batch until the culprit is found.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from itertools import islice
from typing import Generic, TypeVar

import numpy as np

from shared.classifier.loaded import Classifier
from shared.classifier.preprocessing import preprocess
from shared.classifier.runner import Pending, Rows
from shared.errors import describe

T = TypeVar("T")

log = logging.getLogger(__name__)

# An image that takes longer than this to fetch and decode is failed alone; pixel
# limits keep honest images far below it (a 40 MP JPEG decodes in about a second).
DEFAULT_DECODE_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Decoded(Generic[T]):
    item: T
    array: np.ndarray | None
    error: str | None


@dataclass(frozen=True)
class Prediction:
    name: str
    label: str | None
    confidence: float | None
    scores: dict[str, float] | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def decode_ahead(
    groups: Iterable[list[T]],
    decode: Callable[[T], np.ndarray],
    workers: int,
    timeout_seconds: float = DEFAULT_DECODE_TIMEOUT_SECONDS,
    on_wait: Callable[[], None] | None = None,
) -> Generator[list[Decoded[T]], None, None]:
    """Yield each group decoded; the next group decodes in threads while the caller runs this one.

    The network releases the GIL, so Pillow decoding in the pool overlaps inference.
    An item whose decode raises anything, or runs longer than `timeout_seconds`
    from its start, comes back alone with the reason. A hung decode is abandoned
    with its thread; the items still waiting move to fresh threads, so it holds
    its group no longer than its deadline.
    """
    pool = _DecodePool(decode, workers)
    iterator = iter(groups)

    def submit_next() -> list[_Decoding[T]]:
        group = next(iterator, None)
        return [] if group is None else [pool.submit(item) for item in group]

    try:
        pending = submit_next()
        while pending:
            upcoming = submit_next()
            decoded = []
            for decoding in pending:
                if on_wait is not None:
                    on_wait()
                decoded.append(pool.collect(decoding, timeout_seconds))
            yield decoded
            pending = upcoming
    finally:
        pool.shutdown()


@dataclass
class _Decoding(Generic[T]):
    item: T
    future: Future[Decoded[T]]
    started: float | None = None  # monotonic, set by the thread that runs it


class _DecodePool(Generic[T]):
    """Decode threads that a hung decode cannot take away from the items behind it."""

    def __init__(self, decode: Callable[[T], np.ndarray], workers: int) -> None:
        self.decode = decode
        self.workers = workers
        self.pool = self._new_pool()
        self.abandoned = False

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="decode")

    def submit(self, item: T) -> _Decoding[T]:
        decoding: _Decoding[T] = _Decoding(item, Future())
        decoding.future = self.pool.submit(self._guarded, decoding)
        return decoding

    def _guarded(self, decoding: _Decoding[T]) -> Decoded[T]:
        decoding.started = time.monotonic()
        try:
            return Decoded(decoding.item, self.decode(decoding.item), None)
        except Exception as exc:  # any failure of one image is that image's alone
            return Decoded(decoding.item, None, describe(exc))

    def collect(self, decoding: _Decoding[T], timeout_seconds: float) -> Decoded[T]:
        while True:
            if decoding.future.cancelled():  # moved off a pool a hung decode held
                decoding.future = self.pool.submit(self._guarded, decoding)
            started = decoding.started
            wait = 0.1 if started is None else started + timeout_seconds - time.monotonic()
            try:
                return decoding.future.result(timeout=max(wait, 0.0))
            except FutureTimeout:
                if started is not None and time.monotonic() >= started + timeout_seconds:
                    return self._abandon(decoding, timeout_seconds)
            except CancelledError:
                continue

    def _abandon(self, decoding: _Decoding[T], timeout_seconds: float) -> Decoded[T]:
        log.error("decode did not finish in %.0fs; abandoning it", timeout_seconds)
        self.abandoned = True
        # The hung thread keeps its pool; what waited behind it is cancelled there
        # and submitted again, on fresh threads, when it is collected.
        hung, self.pool = self.pool, self._new_pool()
        hung.shutdown(wait=False, cancel_futures=True)
        return Decoded(decoding.item, None, f"not decoded within {timeout_seconds:g}s")

    def shutdown(self) -> None:
        # A hung decode must not hang the caller: leave its thread behind.
        self.pool.shutdown(wait=not self.abandoned, cancel_futures=True)


def run_isolated(
    arrays: list[np.ndarray], run: Callable[[np.ndarray], np.ndarray]
) -> list[np.ndarray | str]:
    """Run `arrays` as one batch; if the pass raises, halves are retried to find the culprit.

    Each position holds the output row, or the reason the pass failed for that item alone.
    """
    if not arrays:
        return []
    try:
        result = run(np.stack(arrays))
        return [result[row] for row in range(len(arrays))]
    except Exception as exc:
        if len(arrays) == 1:
            log.warning("forward pass failed for one item: %s", exc)
            return [f"inference failed: {describe(exc)}"]
    middle = len(arrays) // 2
    return run_isolated(arrays[:middle], run) + run_isolated(arrays[middle:], run)


def run_decoded(
    batch: list[Decoded[T]], run: Callable[[np.ndarray], np.ndarray]
) -> list[np.ndarray | str]:
    """Outputs for each item of `batch`: a probability row, or the reason it has none."""
    positions = [i for i, decoded in enumerate(batch) if decoded.array is not None]
    outputs: list[np.ndarray | str] = [decoded.error or "not decoded" for decoded in batch]
    ran = run_isolated([batch[i].array for i in positions], run)  # type: ignore[misc]
    for position, output in zip(positions, ran, strict=True):
        outputs[position] = output
    return outputs


@dataclass(frozen=True)
class InferredBatch(Generic[T]):
    """One forward pass: each item with its output row or the reason it has none."""

    items: list[T]
    outputs: list[np.ndarray | str]
    inference_ms: float
    # Each item's own inference time, where the engine ran items one per request.
    item_ms: list[float] | None = None


def infer_batches(
    items: Iterable[T],
    decode: Callable[[T], np.ndarray],
    run: Callable[[np.ndarray], np.ndarray],
    *,
    batch_size: int,
    workers: int,
    decode_timeout_seconds: float = DEFAULT_DECODE_TIMEOUT_SECONDS,
) -> Iterator[InferredBatch[T]]:
    """The one batched-inference loop: the CLI, evaluation and feature caching use it."""
    iterator = iter(items)
    groups = iter(lambda: list(islice(iterator, batch_size)), [])
    return infer_groups(
        groups, decode, run, workers=workers, decode_timeout_seconds=decode_timeout_seconds
    )


def infer_groups(
    groups: Iterable[list[T]],
    decode: Callable[[T], np.ndarray],
    run: Callable[[np.ndarray], np.ndarray],
    *,
    workers: int,
    decode_timeout_seconds: float = DEFAULT_DECODE_TIMEOUT_SECONDS,
    on_wait: Callable[[], None] | None = None,
    urgent: Callable[[], list[T]] | None = None,
) -> Iterator[InferredBatch[T]]:
    """One forward pass per group, as the caller formed them (workers: one per claim).

    Before each pass, `urgent` may hand over items that cannot wait for the groups
    already decoding (the interactive lane): they are decoded at once and run
    first, in a pass of their own.
    """
    lane = _DecodePool(decode, 1)

    def urgent_batches() -> Iterator[InferredBatch[T]]:
        waiting = urgent() if urgent is not None else []
        if waiting:
            if on_wait is not None:
                on_wait()
            decodings = [lane.submit(item) for item in waiting]
            yield _infer([lane.collect(d, decode_timeout_seconds) for d in decodings], run)

    try:
        for batch in decode_ahead(groups, decode, workers, decode_timeout_seconds, on_wait):
            yield from urgent_batches()
            yield _infer(batch, run)
        yield from urgent_batches()
    finally:
        lane.shutdown()


def _infer(batch: list[Decoded[T]], run: Callable[[np.ndarray], np.ndarray]) -> InferredBatch[T]:
    started = time.perf_counter()
    outputs = run_decoded(batch, run)
    inference_ms = (time.perf_counter() - started) * 1000
    return InferredBatch([decoded.item for decoded in batch], outputs, inference_ms)


@dataclass
class _Running(Generic[T]):
    batch: list[Decoded[T]]
    pending: Pending
    began: float
    urgent: bool


def infer_pipelined(
    groups: Iterable[list[T]],
    decode: Callable[[T], np.ndarray],
    start: Callable[[Rows, bool], Pending],
    to_output: Callable[[np.ndarray], np.ndarray],
    *,
    workers: int,
    decode_timeout_seconds: float = DEFAULT_DECODE_TIMEOUT_SECONDS,
    on_wait: Callable[[], None] | None = None,
    urgent: Callable[[], list[T]] | None = None,
    wanted: Callable[[list[T]], list[bool]] | None = None,
    depth: int = 2,
    lane_look_seconds: float = 0.05,
) -> Iterator[InferredBatch[T]]:
    """The worker's loop on an engine that runs requests in flight (`ThroughputRunner`).

    Up to `depth` groups, and up to twice as many groups of urgent items, are queued on
    the engine at once, so it never waits while the caller records one group's
    results or the next group decodes. Whenever there is room, and every
    `lane_look_seconds` while it waits, `urgent` is asked for items that cannot
    wait (the interactive lane): they go to the engine ahead of every queued row.
    Groups are yielded as they finish. `to_output` turns a row of logits into the
    output the caller wants. Just before a decoded group goes to the engine,
    `wanted` may say which of its items are still wanted (a job cancelled while
    they decoded): the others are not run, and come back "no longer wanted". A
    lone urgent row on a quiet engine (an idle service's /predict call) is
    yielded before the next group is claimed: it runs on every core, and the
    claim's database work would only slow it.
    """
    lane = _DecodePool(decode, 1)
    decoded_groups = decode_ahead(groups, decode, workers, decode_timeout_seconds, on_wait)
    in_flight: list[_Running[T]] = []
    more_groups = True

    def start_running(batch: list[Decoded[T]], is_urgent: bool) -> None:
        if wanted is not None and not is_urgent:
            keep = wanted([d.item for d in batch])
            batch = [
                d if still else Decoded(d.item, None, "no longer wanted")
                for d, still in zip(batch, keep, strict=True)
            ]
        arrays = [d.array for d in batch if d.array is not None]
        in_flight.append(_Running(batch, start(arrays, is_urgent), time.perf_counter(), is_urgent))

    def take_lane() -> bool:
        if urgent is None or sum(r.urgent for r in in_flight) >= 2 * depth:
            return False
        waiting = urgent()
        if not waiting:
            return False
        if on_wait is not None:
            on_wait()
        decodings = [lane.submit(item) for item in waiting]
        start_running([lane.collect(d, decode_timeout_seconds) for d in decodings], True)
        return True

    def first_done() -> _Running[T]:
        while True:
            for running in in_flight:
                if running.pending.wait(0):
                    return running
            in_flight[0].pending.wait(lane_look_seconds)
            take_lane()

    try:
        while True:
            if take_lane() and len(in_flight) == 1 and len(in_flight[0].batch) == 1:
                # One urgent row on a quiet engine runs on every core at once, and nothing
                # can start on the engine until it ends: its answer comes first, and the
                # next claim and decode wait for it rather than take a core from it.
                alone = in_flight.pop()
                alone.pending.wait()
                yield _finished(alone.batch, alone.pending, alone.began, to_output)
                continue
            while more_groups and sum(not r.urgent for r in in_flight) < depth:
                batch = next(decoded_groups, None)
                if batch is None:
                    more_groups = False
                else:
                    start_running(batch, False)
            if not in_flight:
                return
            done = first_done()
            in_flight.remove(done)
            yield _finished(done.batch, done.pending, done.began, to_output)
    finally:
        decoded_groups.close()
        lane.shutdown()


def _finished(
    batch: list[Decoded[T]],
    pending: Pending,
    began: float,
    to_output: Callable[[np.ndarray], np.ndarray],
) -> InferredBatch[T]:
    ran = iter(zip(pending.results(), pending.latency_ms, strict=True))
    outputs: list[np.ndarray | str] = []
    item_ms: list[float] = []
    for decoded in batch:
        if decoded.array is None:
            outputs.append(decoded.error or "not decoded")
            item_ms.append(0.0)
            continue
        output, latency = next(ran)
        outputs.append(output if isinstance(output, str) else to_output(output[None])[0])
        item_ms.append(latency)
    wall_ms = (time.perf_counter() - began) * 1000
    return InferredBatch([d.item for d in batch], outputs, wall_ms, item_ms)


def predict_stream(
    classifier: Classifier,
    items: Iterable[tuple[str, bytes]],
    *,
    batch_size: int,
    max_pixels: int,
    workers: int = 2,
) -> Iterator[Prediction]:
    """Classify (name, bytes) pairs in order; unreadable ones yield an error prediction."""

    def decode(item: tuple[str, bytes]) -> np.ndarray:
        name, data = item
        return preprocess(data, name, classifier.input_size, max_pixels)

    for batch in infer_batches(
        items, decode, classifier.predict, batch_size=batch_size, workers=workers
    ):
        for (name, _), output in zip(batch.items, batch.outputs, strict=True):
            if isinstance(output, str):
                yield Prediction(name, None, None, None, output)
            else:
                yield to_prediction(name, output, classifier.classes)


def to_prediction(name: str, probabilities: np.ndarray, classes: tuple[str, ...]) -> Prediction:
    best = int(np.argmax(probabilities))
    scores = {label: float(p) for label, p in zip(classes, probabilities, strict=True)}
    return Prediction(name, classes[best], float(probabilities[best]), scores, None)
