"""Batched inference with decoding overlapped: the path the CLI, evaluation and workers share."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Generic, TypeVar

import numpy as np

from shared.classifier.model import Classifier
from shared.classifier.preprocessing import preprocess
from shared.errors import AppError

T = TypeVar("T")


@dataclass(frozen=True)
class Decoded(Generic[T]):
    item: T
    array: np.ndarray | None
    error: AppError | None


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
    items: Iterable[T],
    decode: Callable[[T], np.ndarray],
    batch_size: int,
    workers: int,
) -> Iterator[list[Decoded[T]]]:
    """Yield decoded batches; the next batch decodes in threads while the caller runs this one.

    The network releases the GIL, so Pillow decoding in the pool overlaps inference.
    An item whose decode raises an `AppError` comes back with that error, alone.
    """

    def guarded(item: T) -> Decoded[T]:
        try:
            return Decoded(item, decode(item), None)
        except AppError as exc:
            return Decoded(item, None, exc)

    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:

        def submit_next() -> list[Future[Decoded[T]]]:
            return [pool.submit(guarded, item) for item in islice(iterator, batch_size)]

        pending = submit_next()
        while pending:
            upcoming = submit_next()
            yield [future.result() for future in pending]
            pending = upcoming


def run_decoded(
    batch: list[Decoded[T]], run: Callable[[np.ndarray], np.ndarray]
) -> list[np.ndarray | None]:
    """Run the readable items of `batch` as one array; None in place of each unreadable one."""
    positions = [i for i, decoded in enumerate(batch) if decoded.array is not None]
    outputs: list[np.ndarray | None] = [None] * len(batch)
    if positions:
        result = run(np.stack([batch[i].array for i in positions]))  # type: ignore[misc]
        for row, position in enumerate(positions):
            outputs[position] = result[row]
    return outputs


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

    for batch in decode_ahead(items, decode, batch_size, workers):
        for decoded, probabilities in zip(
            batch, run_decoded(batch, classifier.predict), strict=True
        ):
            name = decoded.item[0]
            if probabilities is None:
                message = decoded.error.message if decoded.error else "not decoded"
                yield Prediction(name, None, None, None, message)
            else:
                yield to_prediction(name, probabilities, classifier.classes)


def to_prediction(name: str, probabilities: np.ndarray, classes: tuple[str, ...]) -> Prediction:
    best = int(np.argmax(probabilities))
    scores = {label: float(p) for label, p in zip(classes, probabilities, strict=True)}
    return Prediction(name, classes[best], float(probabilities[best]), scores, None)
