"""The embedded rate limiter keeps a bounded number of buckets, whoever connects."""

from __future__ import annotations

from shared.access.ratelimit import LocalRateLimiter


def test_buckets_stay_bounded_and_a_heavy_client_stays_limited() -> None:
    limiter = LocalRateLimiter(per_minute=1, burst=2, max_buckets=100)
    assert [limiter.wait_seconds("heavy") > 0 for _ in range(3)] == [False, False, True]
    for address in range(5_000):  # one request from each of many addresses
        assert limiter.wait_seconds(f"address:{address}") == 0
        assert len(limiter.tats) <= 100
    # The heaviest bucket is the last to go: its arrival time is furthest away.
    assert limiter.wait_seconds("heavy") > 0


def test_buckets_whose_time_has_passed_are_forgotten() -> None:
    limiter = LocalRateLimiter(per_minute=60_000_000, burst=1, max_buckets=10)
    for address in range(50):
        limiter.wait_seconds(f"address:{address}")
    assert len(limiter.tats) <= 10
