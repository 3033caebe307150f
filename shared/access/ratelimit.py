"""Per-key limits on job creation: GCRA (a leaky bucket kept as one timestamp per key).

With Redis configured the state lives there, so every API process shares one
limit per key; without it (the embedded default) each process keeps its own.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from functools import lru_cache
from typing import Any, Protocol

from shared.errors import RateLimited
from shared.settings import Settings

log = logging.getLogger(__name__)

# Returns the seconds to wait, as a string (Lua numbers reach Redis as integers).
GCRA_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - now - tolerance
if wait > 0 then return tostring(wait) end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000))
return '0'
"""


class RateLimiter(Protocol):
    def wait_seconds(self, bucket: str) -> float:
        """Take one unit from `bucket`: 0 when allowed, else the seconds until it would be."""
        ...


class LocalRateLimiter:
    """One theoretical arrival time per bucket, at most `max_buckets` of them.

    A bucket whose time has passed holds nothing an absent one would not, so it
    is dropped; past the cap (clients from more addresses than that, all within
    their burst window) the buckets closest to expiring go, which at worst gives
    those clients a fresh burst: memory stays bounded whoever connects.
    """

    def __init__(self, per_minute: int, burst: int, max_buckets: int = 100_000) -> None:
        self.interval = 60.0 / per_minute
        self.tolerance = self.interval * burst
        self.max_buckets = max_buckets
        self.lock = threading.Lock()
        self.tats: dict[str, float] = {}

    def wait_seconds(self, bucket: str) -> float:
        with self.lock:
            now = time.monotonic()
            new_tat = max(self.tats.get(bucket, now), now) + self.interval
            wait = new_tat - now - self.tolerance
            if wait > 0:
                return wait
            self.tats[bucket] = new_tat
            if len(self.tats) > self.max_buckets:
                self._forget(now)
            return 0.0

    def _forget(self, now: float) -> None:
        self.tats = {bucket: tat for bucket, tat in self.tats.items() if tat > now}
        excess = len(self.tats) - self.max_buckets // 2
        if excess > 0:
            for bucket in heapq.nsmallest(excess, self.tats, key=self.tats.__getitem__):
                del self.tats[bucket]


class RedisRateLimiter:
    def __init__(self, url: str, per_minute: int, burst: int) -> None:
        import redis

        self.client: Any = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        self.script = self.client.register_script(GCRA_SCRIPT)
        self.interval = 60.0 / per_minute
        self.tolerance = self.interval * burst

    def wait_seconds(self, bucket: str) -> float:
        import redis

        try:
            wait = float(
                self.script(keys=[f"intel:rate:{bucket}"], args=[self.interval, self.tolerance])
            )
        except redis.RedisError as exc:
            # Failing open: a Redis outage must not stop job submission, which survives it.
            log.warning("rate limiter unavailable, allowing the request: %s", exc)
            return 0.0
        return wait


@lru_cache(maxsize=4)
def _limiter(redis_url: str | None, per_minute: int, burst: int) -> RateLimiter:
    if redis_url:
        return RedisRateLimiter(redis_url, per_minute, burst)
    return LocalRateLimiter(per_minute, burst)


def check_job_rate(settings: Settings, bucket: str) -> None:
    """Raise RateLimited when `bucket` (an API key, or a client address) is over its rate."""
    if settings.rate_limit_per_minute == 0:
        return
    limiter = _limiter(
        settings.redis_url, settings.rate_limit_per_minute, settings.rate_limit_burst
    )
    wait = limiter.wait_seconds(bucket)
    if wait > 0:
        raise RateLimited(
            f"over the limit of {settings.rate_limit_per_minute} jobs per minute "
            f"(bursts of {settings.rate_limit_burst}) for this key (RATE_LIMIT_PER_MINUTE, "
            f"RATE_LIMIT_BURST); retry in {wait:.1f}s",
            wait,
        )
