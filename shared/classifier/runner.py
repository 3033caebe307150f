"""OpenVINO in throughput mode: one image per request, several requests in flight.

OpenVINO's THROUGHPUT hint splits the CPU into streams that each run a request
on their own cores; its `benchmark_app` finds this the fastest way to run the
shipped IR on this machine (one image per request, two streams on two cores).
The runner keeps the device busy: on an engine whose requests are short, twice
the device's optimal number of requests are in flight, so a finished one is
followed at once by one already queued; where a request takes longer than
QUEUE_AHEAD_BELOW_SECONDS the gap between two is too small to matter, and only
the optimal number are in flight, so nothing waits inside the engine. Rows wait
in a priority queue of their own, so an urgent row (the interactive lane) goes
out ahead of every row submitted before it.

A latency-mode twin runs a row on every core at once, where a stream gives it
one: a row that arrives while the engine is idle, with none behind it (a lone
image on a quiet service), and, on an engine of long requests, an urgent row
that arrives beside a backlog. The second waits for the requests in flight to
finish (no new one starts meanwhile), then runs alone: on a 2-core CPU that is
at most one request's time plus half of one, against a request's time twice
over on the next free stream. Where requests are short, the drain would idle
the streams for more than it saves, and the urgent row takes the next free
request. No TensorFlow here.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.classifier.engine import compile_for_cpu
from shared.errors import describe

log = logging.getLogger(__name__)

URGENT, NORMAL = 0, 1
# A request queued behind each running one hides the moment between one finishing and
# the next starting (a callback, a thread's wake-up: up to a few ms while decode threads
# hold the GIL). That is worth having only where a request is short: behind a request of
# a quarter second or more the gap is under 1 %, and a queued request is one more that
# an urgent row, or a newcomer's image, waits behind (half a second each on a CPU whose
# engine runs 4 images a second).
QUEUE_AHEAD_BELOW_SECONDS = 0.25
# Images to run, one a request: a list of preprocessed images, or a batch array's rows.
Rows = Sequence[np.ndarray] | np.ndarray


@dataclass
class Pending:
    """The rows of one submitted batch: each output (or why it has none) and its time."""

    size: int
    outputs: list[np.ndarray | str | None] = field(init=False)
    latency_ms: list[float] = field(init=False)
    _left: int = field(init=False)
    _done: threading.Event = field(init=False, default_factory=threading.Event)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.outputs = [None] * self.size
        self.latency_ms = [0.0] * self.size
        self._left = self.size
        if self.size == 0:
            self._done.set()

    def settle(self, row: int, output: np.ndarray | str, latency_ms: float) -> None:
        with self._lock:
            self.outputs[row] = output
            self.latency_ms[row] = latency_ms
            self._left -= 1
            if self._left == 0:
                self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def results(self) -> list[np.ndarray | str]:
        self._done.wait()
        return [o if o is not None else "not run" for o in self.outputs]


class BusyPace:
    """How long the engine takes a row while it has work: its pace, as it runs here.

    A clock that runs only while a request is in flight is read at each finished
    row; the mean gap over the last `window` rows is the engine's time per row at
    the concurrency it had. Idle spells do not count, so a quiet hour does not
    make a fast engine look slow; the pace differs threefold between CPUs.
    """

    def __init__(self, window: int = 32, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._window = window
        self._busy = 0.0  # busy seconds before the current spell
        self._since: float | None = None  # when the current busy spell began
        self._marks: deque[float] = deque(maxlen=window)  # the busy clock at each finished row

    def started(self, in_flight_before: int) -> None:
        if in_flight_before == 0:
            self._since = self._clock()

    def finished(self, in_flight_after: int) -> None:
        if self._since is None:  # no start was seen (the runner pairs them): nothing to time
            return
        busy = self._busy + (self._clock() - self._since)
        self._marks.append(busy)
        if in_flight_after == 0:
            self._busy, self._since = busy, None

    def seconds_per_row(self) -> float | None:
        """None until a window's worth of rows have finished (an engine not yet seen at work)."""
        if len(self._marks) < self._window:
            return None
        return (self._marks[-1] - self._marks[0]) / (len(self._marks) - 1)


class ThroughputRunner:
    """Runs rows on a compiled model's requests; callable as a batch -> output engine too."""

    def __init__(
        self,
        compiled: Any,
        alone: Any | None = None,
        queue_ahead_below_seconds: float = QUEUE_AHEAD_BELOW_SECONDS,
    ) -> None:
        optimal = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.optimal = max(optimal, 1)
        self._queue_ahead_below = queue_ahead_below_seconds
        self._alone = alone.create_infer_request() if alone is not None else None
        self.requests = [compiled.create_infer_request() for _ in range(2 * self.optimal)]
        self._idle = list(self.requests)
        self._waiting: list[tuple[int, int, Pending, int, np.ndarray]] = []
        self._normal_waiting = 0  # rows of batch work in `_waiting`
        self._order = itertools.count()
        self._cond = threading.Condition()
        for request in self.requests:
            request.set_callback(self._finished, request)
        # Each running request's rows: id(request) -> (pending, row, priority).
        self._in_flight: dict[int, tuple[Pending, int, int]] = {}
        self.pace = BusyPace()
        threading.Thread(target=self._dispatch, name="infer-dispatch", daemon=True).start()
        log.info(
            "throughput mode: %d requests in flight (device optimum %d)",
            len(self.requests),
            optimal,
        )

    def start(self, rows: Rows, urgent: bool = False) -> Pending:
        """Queue each row (one image, or a batch array's rows); returns at once.

        Rows go to their requests as they are: stacking a group into one batch
        array first would copy a megabyte an image for nothing.
        """
        pending = Pending(len(rows))
        priority = URGENT if urgent else NORMAL
        with self._cond:
            for index, row in enumerate(rows):
                request_input = np.ascontiguousarray(row[None], dtype=np.float32)
                heapq.heappush(
                    self._waiting, (priority, next(self._order), pending, index, request_input)
                )
            if priority == NORMAL:
                self._normal_waiting += len(rows)
            self._cond.notify()
        return pending

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        outputs = self.start(batch).results()
        failed = [o for o in outputs if isinstance(o, str)]
        if failed:
            raise RuntimeError(failed[0])
        return np.stack([np.asarray(o) for o in outputs])

    def _dispatch(self) -> None:
        while True:
            with self._cond:
                while (step := self._next_step()) is None:
                    self._cond.wait()
                alone, (priority, _, pending, row, array) = step
                if priority == NORMAL:
                    self._normal_waiting -= 1
                if not alone:
                    request = self._idle.pop()
                    self.pace.started(len(self._in_flight))
                    self._in_flight[id(request)] = (pending, row, priority)
            if alone:
                self._run_alone(pending, row, array)
                continue
            try:
                request.start_async([array])
            except Exception as exc:  # this row alone
                self._release(request)
                pending.settle(row, f"inference failed: {describe(exc)}", 0.0)

    def _next_step(self) -> tuple[bool, tuple[int, int, Pending, int, np.ndarray]] | None:
        """(alone, the row) to run now, popped from the queue; None while it must wait.

        Called with the lock held.
        """
        if not self._waiting:
            return None
        long_requests = self._long_requests()
        lane_first = self._waiting[0][0] == URGENT and self._alone is not None
        if long_requests and lane_first and self._beside_backlog():
            # The lane beside batch work on a slow engine: no new request starts until
            # those in flight are done, then the urgent row has every core.
            if self._in_flight:
                return None
            return True, heapq.heappop(self._waiting)
        in_flight_at_most = self.optimal if long_requests else len(self.requests)
        if not self._idle or len(self._in_flight) >= in_flight_at_most:
            return None
        quiet = not self._in_flight
        entry = heapq.heappop(self._waiting)
        return quiet and not self._waiting and self._alone is not None, entry

    def _beside_backlog(self) -> bool:
        running = (priority for _, _, priority in self._in_flight.values())
        return self._normal_waiting > 0 or NORMAL in running

    def _long_requests(self) -> bool:
        """Whether a request takes long enough that none is queued behind the running
        ones (QUEUE_AHEAD_BELOW_SECONDS), and the lane beside a backlog runs alone."""
        per_row = self.pace.seconds_per_row()
        return per_row is not None and per_row * self.optimal >= self._queue_ahead_below

    def _run_alone(self, pending: Pending, row: int, array: np.ndarray) -> None:
        """One row with the engine to itself: in latency mode, here, on every core."""
        assert self._alone is not None
        try:
            result = self._alone.infer([array])
            output: np.ndarray | str = np.array(next(iter(result.values()))[0])
            latency = float(self._alone.latency)
        except Exception as exc:
            output, latency = f"inference failed: {describe(exc)}", 0.0
        pending.settle(row, output, latency)

    def _finished(self, request: Any) -> None:
        pending, row, _ = self._in_flight[id(request)]
        try:
            output: np.ndarray | str = np.array(request.get_output_tensor(0).data[0])
            latency = float(request.latency)
        except Exception as exc:
            output, latency = f"inference failed: {describe(exc)}", 0.0
        self._release(request)
        pending.settle(row, output, latency)

    def _release(self, request: Any) -> None:
        with self._cond:
            del self._in_flight[id(request)]
            self.pace.finished(len(self._in_flight))
            self._idle.append(request)
            self._cond.notify()

    def seconds_per_row(self) -> float | None:
        """The engine's recent time per row while busy (None before it has been seen at work)."""
        with self._cond:
            return self.pace.seconds_per_row()


def compile_throughput(
    model: Any, queue_ahead_below_seconds: float = QUEUE_AHEAD_BELOW_SECONDS
) -> ThroughputRunner:
    """An OpenVINO model (or an IR .xml path) compiled for throughput on this CPU, with a
    latency-mode twin for the lone row on a quiet engine and the lane beside a backlog."""
    import openvino as ov

    if isinstance(model, Path):
        model = ov.Core().read_model(model)  # read once, compiled twice
    fixed = one_row(model)
    return ThroughputRunner(
        compile_for_cpu(fixed, "THROUGHPUT"),
        compile_for_cpu(fixed, "LATENCY"),
        queue_ahead_below_seconds,
    )


def one_row(model: Any) -> Any:
    """A copy of `model` whose batch dimension is fixed at one, the only size the runner sends.

    With a dynamic batch dimension OpenVINO plans each request's memory when it
    runs; with a static one it plans once. `benchmark_app` on the shipped IR, one
    image a request: about 10 % more images a second with `-shape [1,...]` than
    with `-data_shape [1,...]` on the 2-core machines here. Its kernels differ
    from the batch engine's: logits move by up to about 1e-2 on photos,
    probabilities by about 1e-5, labels not at all.
    """
    import openvino as ov

    fixed = model.clone()
    dims = list(fixed.input(0).get_partial_shape())
    fixed.reshape({fixed.input(0): ov.PartialShape([1, *dims[1:]])})
    return fixed
