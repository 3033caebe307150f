"""The capacity simulation behaves as a queue must: it is the tool docs/capacity.md trusts."""

from __future__ import annotations

import pytest

from bench.capacity import simulate, workers_needed

PER_WORKER = 30.0
MIX = {1: 0.9, 100: 0.1}  # no rare 1,000-image zips: short runs stay near their mean


def test_utilisation_follows_the_offered_load_and_waits_stay_short_below_capacity() -> None:
    outcome = simulate(2, 0.5 * 2 * PER_WORKER, per_worker=PER_WORKER, mix=MIX, seconds=600)
    assert outcome.utilisation == pytest.approx(0.5, abs=0.08)
    assert outcome.single_wait_p95_s < 1.0


def test_past_capacity_the_workers_saturate_and_zips_wait_while_the_lane_does_not() -> None:
    calm = simulate(1, 0.5 * PER_WORKER, per_worker=PER_WORKER, mix=MIX, seconds=600)
    flooded = simulate(1, 1.5 * PER_WORKER, per_worker=PER_WORKER, mix=MIX, seconds=600)
    assert flooded.utilisation > 0.97
    assert flooded.zip100_p95_s is not None
    assert calm.zip100_p95_s is not None
    assert flooded.zip100_p95_s > 5 * calm.zip100_p95_s
    assert flooded.single_wait_p95_s < 1.0  # single images still go first


def test_more_workers_at_the_same_share_of_capacity_wait_no_longer() -> None:
    one = simulate(1, 0.8 * PER_WORKER, per_worker=PER_WORKER, mix=MIX, seconds=600)
    ten = simulate(10, 0.8 * 10 * PER_WORKER, per_worker=PER_WORKER, mix=MIX, seconds=600)
    assert ten.single_wait_p95_s <= one.single_wait_p95_s
    assert ten.zip100_p95_s is not None
    assert one.zip100_p95_s is not None
    assert ten.zip100_p95_s < one.zip100_p95_s  # a zip spreads over many workers


def test_workers_needed_grows_with_the_load() -> None:
    needed = [workers_needed(rate, per_worker=PER_WORKER, seconds=600) for rate in (10, 100, 300)]
    assert needed == sorted(needed)
    assert needed[0] == 1
    assert needed[-1] >= 300 / PER_WORKER
