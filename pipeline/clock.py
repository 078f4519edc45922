"""Time, injected: wall-clock time decides time keys, monotonic time decides waits.

Keeping both behind one small protocol lets tests freeze or jump the wall clock
(the way fluentd's ``Clock.freeze`` does) without touching the code under test.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """A source of wall-clock and monotonic time."""

    def time(self) -> float:
        """Seconds since the epoch (wall clock; may jump)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards."""
        ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to; for unit tests.

    >>> clock = FakeClock(1000.0)
    >>> clock.advance(5)
    >>> clock.time(), clock.monotonic()
    (1005.0, 5.0)
    """

    def __init__(self, wall: float = 1_795_000_000.0) -> None:
        self._wall = wall
        self._mono = 0.0

    def time(self) -> float:
        """Current fake wall time."""
        return self._wall

    def monotonic(self) -> float:
        """Current fake monotonic time."""
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        self._wall += seconds
        self._mono += seconds

    def set_wall(self, wall: float) -> None:
        """Jump the wall clock (forwards or backwards); monotonic time does not move."""
        self._wall = wall
