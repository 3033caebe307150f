"""How much a worker claims at once (a full batch, or a group sized to its engine's pace),
and for how long a task goes on claiming."""

from __future__ import annotations

from worker.batching import (
    GROUP_SECONDS,
    MAX_GROUPS_PER_TASK,
    SMALLEST_GROUP,
    TASK_SECONDS,
    TaskBudget,
    group_size,
)


def test_an_engine_that_runs_whole_batches_gets_a_full_batch() -> None:
    assert group_size(16, pipelined=False, seconds_per_image=0.5) == 16


def test_an_engine_not_yet_seen_at_work_gets_half_a_batch() -> None:
    assert group_size(16, pipelined=True, seconds_per_image=None) == 8


def test_a_fast_engine_gets_half_a_batch_and_no_more() -> None:
    assert group_size(16, pipelined=True, seconds_per_image=GROUP_SECONDS / 40) == 8


def test_a_slow_engine_claims_what_it_runs_in_group_seconds() -> None:
    # Three times slower than a full group in GROUP_SECONDS: a third of the images
    # claimed ahead, so a newcomer waits as long on this CPU as on a fast one.
    assert group_size(16, pipelined=True, seconds_per_image=GROUP_SECONDS * 3 / 8) == 3


def test_a_very_slow_engine_still_claims_a_few() -> None:
    assert group_size(16, pipelined=True, seconds_per_image=10.0) == SMALLEST_GROUP
    assert group_size(1, pipelined=True, seconds_per_image=10.0) == 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


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
