"""A clock tests move by hand, for code that takes a `clock` callable."""

from __future__ import annotations


class FakeClock:
    """Reads `now` (monotonic seconds); a test advances it by assigning to `now`."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
