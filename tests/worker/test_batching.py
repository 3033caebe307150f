"""How much a worker claims at once: a full batch, or a group sized to its engine's pace."""

from __future__ import annotations

from worker.batching import GROUP_SECONDS, SMALLEST_GROUP, group_size


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
