"""How much a worker claims at once (a full batch, or a group sized to its engine's pace),
for how long a task goes on claiming, and when a busy worker looks for /predict calls."""

from __future__ import annotations

from testkit.clock import FakeClock
from worker.batching import (
    GROUP_SECONDS,
    LANE_LOOK_SECONDS,
    LANE_READ_SECONDS,
    MAX_GROUPS_PER_TASK,
    SMALLEST_GROUP,
    TASK_SECONDS,
    LaneLook,
    TaskBudget,
    group_size,
)


def test_an_engine_that_runs_whole_batches_gets_a_full_batch() -> None:
    assert group_size(16, pipelined=False, seconds_per_image=0.5) == 16


def test_an_engine_not_yet_seen_at_work_gets_half_a_batch() -> None:
    assert group_size(16, pipelined=True, seconds_per_image=None) == 8


def test_a_fast_engine_gets_a_full_batch_and_no_more() -> None:
    assert group_size(16, pipelined=True, seconds_per_image=GROUP_SECONDS / 40) == 16


def test_an_engine_claims_what_it_runs_in_group_seconds_up_to_a_batch() -> None:
    assert group_size(16, pipelined=True, seconds_per_image=GROUP_SECONDS / 12) == 12


def test_a_slow_engine_claims_what_it_runs_in_group_seconds() -> None:
    # Three times slower than a full group in GROUP_SECONDS: a third of the images
    # claimed ahead, so a newcomer waits as long on this CPU as on a fast one.
    assert group_size(16, pipelined=True, seconds_per_image=GROUP_SECONDS * 3 / 8) == 3


def test_a_very_slow_engine_still_claims_a_few() -> None:
    assert group_size(16, pipelined=True, seconds_per_image=10.0) == SMALLEST_GROUP
    assert group_size(1, pipelined=True, seconds_per_image=10.0) == 1


def test_a_task_claims_until_its_time_is_up_however_many_groups_that_is() -> None:
    # Not a fixed count of groups: at each hand-over the engine drains, and a count
    # that suits a fast CPU hands over every two seconds on a slow one.
    clock = FakeClock()
    budget = TaskBudget(clock)
    for _ in range(20):
        assert budget.another_group()
        clock.now += TASK_SECONDS / 40
    clock.now += TASK_SECONDS / 2
    assert not budget.another_group()


def test_a_task_claims_at_most_its_limit_of_groups_however_fast() -> None:
    # The task's time limits are computed from this many groups.
    budget = TaskBudget(FakeClock())
    assert sum(budget.another_group() for _ in range(2 * MAX_GROUPS_PER_TASK)) == (
        MAX_GROUPS_PER_TASK
    )


class Lane:
    """The lane as a busy worker sees it: the broker's ask token, and the database."""

    def __init__(self) -> None:
        self.token: str | None = "3"
        self.calls_waiting = False
        self.reads = 0

    def asked(self) -> str | None:
        return self.token

    def waiting(self) -> bool:
        self.reads += 1
        return self.calls_waiting


def test_a_call_heard_of_is_looked_for_at_once() -> None:
    clock, lane = FakeClock(), Lane()
    look = LaneLook(lane.asked, lane.waiting, clock)
    look.called()  # the first look: whatever came before this task
    clock.now += LANE_LOOK_SECONDS
    assert not look.called()
    reads = lane.reads
    clock.now += LANE_LOOK_SECONDS
    lane.token, lane.calls_waiting = "4", True  # a /predict call asked for the lane
    assert look.called()
    assert lane.reads == reads + 1


def test_a_call_another_worker_took_is_not_claimed() -> None:
    # Every busy worker hears the same ask; the one that reads it gone takes no lock.
    clock, lane = FakeClock(), Lane()
    look = LaneLook(lane.asked, lane.waiting, clock)
    look.called()
    clock.now += LANE_LOOK_SECONDS
    lane.token = "4"
    assert not look.called()


def test_with_no_call_heard_of_the_database_is_read_once_a_second() -> None:
    clock, lane = FakeClock(), Lane()
    look = LaneLook(lane.asked, lane.waiting, clock)
    look.called()
    looks = round(LANE_READ_SECONDS / LANE_LOOK_SECONDS) * 3
    lane.calls_waiting = True  # its word was lost with the broker
    answers = []
    for _ in range(looks):
        clock.now += LANE_LOOK_SECONDS
        answers.append(look.called())
    assert 2 <= lane.reads <= 4  # not twenty a second
    assert any(answers)  # and the call is found all the same


def test_looks_are_spaced_however_often_the_worker_asks() -> None:
    clock, lane = FakeClock(), Lane()
    look = LaneLook(lane.asked, lane.waiting, clock)
    look.called()
    lane.token, lane.calls_waiting = "5", True
    assert not look.called()  # no time has passed: the broker is not asked
    clock.now += LANE_LOOK_SECONDS
    assert look.called()


def test_where_the_broker_cannot_say_every_look_reads_the_database() -> None:
    clock, lane = FakeClock(), Lane()
    lane.token = None  # the folder broker with the lane's message waiting, or Redis away
    look = LaneLook(lane.asked, lane.waiting, clock)
    for _ in range(5):
        look.called()
        clock.now += LANE_LOOK_SECONDS
    assert lane.reads == 5
