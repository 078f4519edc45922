"""Retry policy as plain state: exponential backoff with jitter, bounded by attempts and time.

A pure decision, tested with a fake clock (fluentd's ``retry_state.rb`` plays this
part there). Written here rather than taken from a retry library because the flusher
keeps one state per chunk across queue turns, which decorator-style libraries do not
model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pipeline.config import BufferConfig


@dataclass
class RetryState:
    """The failures of one chunk so far."""

    first_failure: float
    attempts: int = 0
    last_error: str = ""


def next_delay(config: BufferConfig, attempts: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt ``attempts + 1``.

    >>> from pipeline.config import BufferConfig
    >>> cfg = BufferConfig(retry_wait=1.0, retry_max_interval=10.0, retry_randomize=False)
    >>> [next_delay(cfg, n) for n in (1, 2, 3, 4, 5, 6)]
    [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    """
    delay = min(config.retry_max_interval, config.retry_wait * 2 ** max(attempts - 1, 0))
    if config.retry_randomize:
        # Full range ±12.5 %: spreads the hosts of a fleet that failed together.
        delay *= 0.875 + 0.25 * (rng or random).random()
    return float(delay)


def exhausted(config: BufferConfig, state: RetryState, now: float) -> bool:
    """Whether the chunk has used up its attempts or its time.

    >>> cfg = BufferConfig(retry_limit=3, retry_timeout=60.0)
    >>> exhausted(cfg, RetryState(first_failure=0.0, attempts=3), 1.0)
    True
    >>> exhausted(cfg, RetryState(first_failure=0.0, attempts=1), 61.0)
    True
    >>> exhausted(cfg, RetryState(first_failure=0.0, attempts=1), 1.0)
    False
    """
    return state.attempts >= config.retry_limit or now - state.first_failure >= config.retry_timeout
