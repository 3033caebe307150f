"""The worker's engine in throughput mode, on the shipped IR: same answers, urgent rows first."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from shared.classifier.artifact import SERVING_XML
from shared.classifier.engine import compile_openvino
from shared.classifier.inference import infer_pipelined
from shared.classifier.loaded import softmax
from shared.classifier.preprocessing import preprocess
from shared.classifier.runner import (
    BusyPace,
    Pending,
    Rows,
    ThroughputRunner,
    compile_throughput,
    one_row,
)
from shared.settings import DEFAULT_MODEL_PATH
from shared.training.dataset import list_labelled_images
from testkit.clock import FakeClock
from testkit.resources import TRAIN_DIR
from testkit.stand_in import build_stand_in

IR = DEFAULT_MODEL_PATH / "model.xml"


@pytest.fixture(scope="module")
def runner() -> ThroughputRunner:
    return compile_throughput(IR)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 299, 299, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def row_by_row() -> Callable[[np.ndarray], np.ndarray]:
    """The runner's model (batch fixed at one) run one row at a time, in latency mode."""
    import openvino as ov

    engine = compile_openvino(one_row(ov.Core().read_model(IR)))
    return lambda batch: np.concatenate([engine(batch[i : i + 1]) for i in range(len(batch))])


def test_rows_in_flight_give_what_rows_one_by_one_give(
    runner: ThroughputRunner, row_by_row: Callable[[np.ndarray], np.ndarray]
) -> None:
    batch = images(6)
    assert np.array_equal(runner(batch), row_by_row(batch))
    pending = runner.start(batch)
    assert pending.wait(120)
    assert all(ms > 0 for ms in pending.latency_ms)  # each row's own time in the engine
    # Separate images (the worker's decoded group, never stacked) run as the rows did.
    separate = runner.start([np.array(row) for row in batch]).results()
    assert np.array_equal(np.stack([np.asarray(o) for o in separate]), runner(batch))


def test_an_urgent_row_overtakes_the_rows_queued_before_it(runner: ThroughputRunner) -> None:
    finished: list[str] = []
    lock = threading.Lock()
    backlog = runner.start(images(24, seed=1))
    lane = runner.start(images(1, seed=2), urgent=True)

    def note(name: str, pending: Pending) -> None:
        pending.wait()
        with lock:
            finished.append(name)

    threads = [
        threading.Thread(target=note, args=("backlog", backlog)),
        threading.Thread(target=note, args=("lane", lane)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert finished == ["lane", "backlog"]
    [row] = lane.results()
    assert not isinstance(row, str)
    assert row.shape == (6,)


def test_the_pipelined_loop_serves_the_lane_while_groups_run(
    runner: ThroughputRunner, row_by_row: Callable[[np.ndarray], np.ndarray]
) -> None:
    data = images(40, seed=3)
    arrived = [[], [39]]  # the lane is empty at first, then holds one item

    def lane() -> list[int]:
        return arrived.pop(0) if arrived else []

    batches = list(
        infer_pipelined(
            [list(range(i, i + 13)) for i in range(0, 39, 13)],
            lambda i: data[i],
            runner.start,
            lambda logits: logits,
            workers=2,
            urgent=lane,
        )
    )
    order = [batch.items for batch in batches]
    assert [39] in order
    assert order.index([39]) < len(order) - 1  # ahead of a group submitted before it
    reference = row_by_row(data)
    for batch in batches:
        for item, output in zip(batch.items, batch.outputs, strict=True):
            assert np.allclose(output, reference[item], atol=1e-4)
        assert batch.item_ms is not None


@pytest.fixture(scope="module")
def slow_runner(tmp_path_factory: pytest.TempPathFactory) -> ThroughputRunner:
    """An engine whose requests are long for it: a stand-in model of about 50 ms an
    image, with requests counted long from 30 ms (the service's bound is a quarter
    second: the shipped IR's requests on a CPU without VNNI take twice that)."""
    model = build_stand_in(tmp_path_factory.mktemp("slow") / "model", seconds_per_image=0.05)
    return compile_throughput(model / SERVING_XML, queue_ahead_below_seconds=0.03)


def settled(pending: Pending) -> int:
    return sum(output is not None for output in pending.outputs)


def test_on_an_engine_of_long_requests_an_urgent_row_waits_only_for_the_requests_running(
    slow_runner: ThroughputRunner,
) -> None:
    assert slow_runner.start(images(32, seed=6)).wait(120)  # its pace is known now
    backlog = slow_runner.start(images(16, seed=7))
    while settled(backlog) == 0:  # the backlog is running
        time.sleep(0.01)
    before = settled(backlog)
    lane = slow_runner.start(images(1, seed=8), urgent=True)
    assert lane.wait(60)
    # No request is queued behind the running ones (the gap between two is nothing
    # beside a long request): the urgent row waits for those the streams run, no more.
    assert settled(backlog) - before <= slow_runner.optimal
    [row] = lane.results()
    assert not isinstance(row, str)
    assert backlog.wait(60)
    assert not any(isinstance(o, str) for o in backlog.results())


def test_items_no_longer_wanted_never_reach_the_engine(runner: ThroughputRunner) -> None:
    data = images(6, seed=4)
    started: list[int] = []

    def start(batch: Rows, urgent: bool) -> Pending:
        started.append(len(batch))
        return runner.start(batch, urgent)

    [batch] = list(
        infer_pipelined(
            [list(range(6))],
            lambda i: data[i],
            start,
            lambda logits: logits,
            workers=2,
            wanted=lambda items: [item % 2 == 0 for item in items],  # odd ones were cancelled
        )
    )
    assert started == [3]
    assert [o for o in batch.outputs if isinstance(o, str)] == ["no longer wanted"] * 3
    assert all(not isinstance(batch.outputs[i], str) for i in (0, 2, 4))


def test_a_lone_urgent_row_is_answered_before_the_next_group_is_claimed(
    runner: ThroughputRunner,
) -> None:
    data = images(5, seed=5)
    claimed: list[str] = []

    def groups() -> Iterator[list[int]]:
        claimed.append("group")  # a claim, with its database work
        yield [1, 2, 3, 4]

    arrived = [[0]]
    batches = infer_pipelined(
        groups(),
        lambda i: data[i],
        runner.start,
        lambda logits: logits,
        workers=2,
        urgent=lambda: arrived.pop(0) if arrived else [],
    )
    first = next(batches)
    assert first.items == [0]
    assert claimed == []  # nothing took a core from the row running on all of them
    assert [batch.items for batch in batches] == [[1, 2, 3, 4]]
    assert claimed == ["group"]


def test_the_engine_pace_counts_only_the_time_it_had_work() -> None:
    clock = FakeClock()
    pace = BusyPace(window=4, clock=clock)
    assert pace.seconds_per_row() is None  # not yet seen at work
    for _ in range(2):  # two busy spells of two rows each, 0.1 s apart, an hour between
        pace.started(0)
        pace.started(1)
        clock.now += 0.1
        pace.finished(1)
        clock.now += 0.1
        pace.finished(0)
        clock.now += 3600
    assert pace.seconds_per_row() == pytest.approx(0.1)


def test_the_engine_pace_follows_its_latest_rows() -> None:
    clock = FakeClock()
    pace = BusyPace(window=4, clock=clock)
    pace.started(0)
    for gap in (0.5, 0.5, 0.5, 0.5, 0.05, 0.05, 0.05, 0.05):
        clock.now += gap
        pace.finished(1)
    assert pace.seconds_per_row() == pytest.approx(0.05)


def test_the_runner_knows_its_pace_once_it_has_run_a_window_of_rows(
    runner: ThroughputRunner,
) -> None:
    began = time.monotonic()
    assert runner.start(images(32, seed=5)).wait(120)
    wall = time.monotonic() - began
    pace = runner.seconds_per_row()
    assert pace is not None
    assert 0 < pace <= wall / 31  # busy time between the window's first and last row


def test_the_one_row_model_classifies_photos_as_the_batch_engine_does() -> None:
    import openvino as ov

    photos = list_labelled_images(TRAIN_DIR)[::300][:24]
    batch = np.stack([preprocess(p.path.read_bytes(), p.path.name, 299, 10**8) for p in photos])
    by_batch = softmax(compile_openvino(IR)(batch))
    engine = compile_openvino(one_row(ov.Core().read_model(IR)))
    by_row = softmax(np.concatenate([engine(batch[i : i + 1]) for i in range(len(batch))]))
    assert np.array_equal(by_row.argmax(axis=1), by_batch.argmax(axis=1))
    assert np.abs(by_row - by_batch).max() < 1e-4  # other kernels, the same answers
