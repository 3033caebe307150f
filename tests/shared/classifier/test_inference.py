"""The shared batch loop: one image's failure, hang or poisoned forward pass stays its own."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

import numpy as np

from shared.classifier.inference import decode_ahead, infer_groups, run_decoded


def groups(items: Iterable[int], size: int) -> Iterator[list[int]]:
    group: list[int] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _decode(item: int) -> np.ndarray:
    if item == 3:
        raise KeyError("an EXIF tag the parser did not expect")  # not an AppError
    if item == 5:
        raise MemoryError
    return np.full((2,), float(item), np.float32)


def _run(batch: np.ndarray) -> np.ndarray:
    if (batch == 7.0).any():  # one poisoned input breaks the whole forward pass
        raise RuntimeError("kernel failed")
    return batch * 10


def test_any_exception_while_decoding_fails_that_item_alone() -> None:
    outputs: list[np.ndarray | str] = []
    for batch in decode_ahead(groups(range(10), 4), _decode, workers=2):
        outputs += run_decoded(batch, _run)
    assert isinstance(outputs[3], str)
    assert "KeyError" in outputs[3]
    assert outputs[5] == "MemoryError"
    assert outputs[7] == "inference failed: RuntimeError: kernel failed"
    fine = [i for i in range(10) if i not in {3, 5, 7}]
    for i in fine:
        output = outputs[i]
        assert not isinstance(output, str)
        assert output.tolist() == [i * 10.0, i * 10.0]


def test_a_forward_pass_that_raises_is_bisected_to_the_culprit() -> None:
    calls: list[int] = []

    def counting(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return _run(batch)

    batch = next(decode_ahead([[7, 0, 1, 2, 4, 6, 8, 9]], _decode, workers=2))
    outputs = run_decoded(batch, counting)
    assert outputs[0] == "inference failed: RuntimeError: kernel failed"
    assert all(not isinstance(o, str) for o in outputs[1:])
    assert len(calls) <= 1 + 2 * 3  # log2(8) levels of halves, two passes each at most


def test_a_hung_decode_is_abandoned_and_fails_alone() -> None:
    release, returned = threading.Event(), threading.Event()

    def hangs_on_two(item: int) -> np.ndarray:
        if item == 2:
            release.wait(60)
            returned.set()
        return np.zeros((1,), np.float32)

    items = [
        decoded
        for batch in decode_ahead(groups(range(6), 3), hangs_on_two, 2, timeout_seconds=0.5)
        for decoded in batch
    ]
    assert not returned.is_set()  # the loop ended while that decode still hangs
    release.set()
    assert [d.error for d in items] == [None, None, "not decoded within 0.5s", None, None, None]


def test_hung_decodes_do_not_take_the_threads_of_the_items_behind_them() -> None:
    """Two hangs on a pool of two: each fails alone at its deadline, the rest still decode."""
    release = threading.Event()
    waits: list[int] = []

    def hangs(item: int) -> np.ndarray:
        if item in {0, 1}:
            release.wait(60)
        waits.append(item)
        return np.zeros((1,), np.float32)

    try:
        [batch] = list(decode_ahead([list(range(8))], hangs, 2, timeout_seconds=0.5))
    finally:
        release.set()
    errors = [d.error for d in batch]
    assert errors[:2] == ["not decoded within 0.5s"] * 2
    assert errors[2:] == [None] * 6


def test_urgent_items_run_before_the_groups_already_decoding() -> None:
    arrived = [[9], [], [8]]  # what the lane holds before each pass

    def lane() -> list[int]:
        return arrived.pop(0) if arrived else []

    passes = [
        [int(o[0]) // 10 for o in batch.outputs if not isinstance(o, str)]
        for batch in infer_groups(
            [[0, 1], [2, 4], [6]], _decode, lambda b: b * 10, workers=2, urgent=lane
        )
    ]
    assert passes == [[9], [0, 1], [2, 4], [8], [6]]
