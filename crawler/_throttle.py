"""The shared request rate: a leaky bucket that slows down when throttled.

One ``aiolimiter.AsyncLimiter`` holds the configured rate for every call of a
crawl.  Throttling is handled by making each request cost more than one unit
of the bucket: at a cost of 2 the bucket lets half the configured rate
through.  The cost doubles on each throttling answer and creeps back to 1
while the server stays quiet.
"""

from __future__ import annotations

import asyncio
import logging

from aiolimiter import AsyncLimiter

__all__ = ["AdaptiveRate"]

logger = logging.getLogger(__name__)

# The bucket holds this many seconds' worth of requests, so that a late timer
# wake-up does not lose capacity; it starts full, so there is no burst at start.
_BUCKET_S = 0.05
_MAX_COST = 64.0  # slow down to 1/64 of the configured rate at the most
_RECOVER_EVERY_S = 1.0  # how long the server must stay quiet per recovery step
_RECOVER_STEP = 0.8  # each step multiplies the cost by this


class AdaptiveRate:
    """Spaces requests to at most ``rate_per_s`` per second, shared by all.

    ``rate_per_s`` of 0 or ``None`` disables the limit; throttling answers
    then only pause the crawl for their ``Retry-After``.
    """

    __slots__ = (
        "_capacity",
        "_cost",
        "_filled",
        "_last_change",
        "_limiter",
        "_paused_until",
        "rate_per_s",
    )

    def __init__(self, rate_per_s: float | None) -> None:
        self.rate_per_s = rate_per_s or 0.0
        self._limiter: AsyncLimiter | None = None
        self._capacity = 1.0
        if self.rate_per_s:
            self._capacity = max(1.0, self.rate_per_s * _BUCKET_S)
            self._limiter = AsyncLimiter(
                self._capacity, self._capacity / self.rate_per_s
            )
        self._filled = False
        self._cost = 1.0
        self._last_change = 0.0
        self._paused_until = 0.0

    @property
    def current_rate_per_s(self) -> float:
        """The rate let through now, after any slow-down."""
        return self.rate_per_s / self._cost

    async def acquire(self) -> None:
        """Wait until one more request may be sent."""
        loop = asyncio.get_running_loop()
        pause_s = self._paused_until - loop.time()
        if pause_s > 0:
            await asyncio.sleep(pause_s)
        limiter = self._limiter
        if limiter is None:
            return
        if not self._filled:
            # Start with a full bucket: the first requests are spaced at the
            # configured rate instead of going out in one burst.
            self._filled = True
            await limiter.acquire(self._capacity)
        cost = self._cost
        while cost > self._capacity:
            await limiter.acquire(self._capacity)
            cost -= self._capacity
        await limiter.acquire(cost)

    def throttled(self, retry_after_s: float | None) -> None:
        """The server said we are too fast: slow every request down."""
        now = asyncio.get_running_loop().time()
        if retry_after_s:
            self._paused_until = max(self._paused_until, now + retry_after_s)
        # Requests already in flight when we slowed down will be throttled
        # too; count one slow-down per bucket period, not one per answer.
        if now - self._last_change < self._period_s():
            return
        self._cost = min(_MAX_COST, self._cost * 2.0)
        self._last_change = now
        logger.debug("throttled: rate now %.1f/s", self.current_rate_per_s)

    def succeeded(self) -> None:
        """A request went through: recover towards the configured rate."""
        if self._cost == 1.0:
            return
        now = asyncio.get_running_loop().time()
        if now - self._last_change >= _RECOVER_EVERY_S:
            self._cost = max(1.0, self._cost * _RECOVER_STEP)
            self._last_change = now
            logger.debug("recovering: rate now %.1f/s", self.current_rate_per_s)

    def _period_s(self) -> float:
        if not self.rate_per_s:
            return 0.5
        return max(0.5, self._capacity * self._cost / self.rate_per_s)
