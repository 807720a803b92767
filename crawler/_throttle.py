"""The shared request rate: a leaky bucket that slows down when throttled.

One ``aiolimiter.AsyncLimiter`` holds the configured rate for every call of a
crawl.  Throttling is handled by making each request cost more than one unit
of the bucket: at a cost of 2 the bucket lets half the configured rate
through.  The cost doubles on each throttling answer and creeps back to 1
while the server stays quiet.

A crawl with no configured rate counts its pace instead; the first
throttling answer sets the rate to the pace reached then, halved, and the
crawl adapts from there, except that while the server stays quiet it may
also climb above that first estimate, to find the server's limit.
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
_MIN_PACE_WINDOW_S = 0.25  # the pace before a first throttle is measured over this
_MAX_CLIMB = 16.0  # with no rate set: climb to this many times the estimate


class AdaptiveRate:
    """Spaces requests to at most ``rate_per_s`` per second, shared by all.

    ``rate_per_s`` of 0 or ``None`` starts without a limit, until the server
    throttles.
    """

    __slots__ = (
        "_capacity",
        "_cost",
        "_filled",
        "_last_change",
        "_limiter",
        "_min_cost",
        "_paused_until",
        "_window_count",
        "_window_start",
        "rate_per_s",
    )

    def __init__(self, rate_per_s: float | None) -> None:
        self.rate_per_s = 0.0
        self._limiter: AsyncLimiter | None = None
        self._capacity = 1.0
        self._filled = False
        self._cost = 1.0
        self._min_cost = 1.0  # never faster than a configured rate
        self._last_change = 0.0
        self._paused_until = 0.0
        # Requests sent since _window_start while there is no limit: the
        # pace a first throttling answer turns into a rate.
        self._window_start = 0.0
        self._window_count = 0
        if rate_per_s:
            self._limit_to(rate_per_s)

    def _limit_to(self, rate_per_s: float) -> None:
        self.rate_per_s = rate_per_s
        self._capacity = max(1.0, rate_per_s * _BUCKET_S)
        self._limiter = AsyncLimiter(self._capacity, self._capacity / rate_per_s)
        self._filled = False

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
            if not self._window_count:
                self._window_start = loop.time()
            self._window_count += 1
            return
        if not self._filled:
            # Start with a full bucket: the first requests are spaced at the
            # configured rate instead of going out in one burst.
            self._filled = True
            await limiter.acquire(self._capacity)
        # Pay the cost in units of at most one request, reading it afresh
        # each time: a request queued while the crawl was slowed down must
        # not go on paying the old price after it has recovered, nor wait
        # behind cheaper newcomers for a bigger slice of the bucket.
        paid = 0.0
        while (owed := self._cost - paid) > 0:
            unit = min(owed, 1.0)
            await limiter.acquire(unit)
            paid += unit

    def throttled(self, retry_after_s: float | None) -> None:
        """The server said we are too fast: slow every request down."""
        now = asyncio.get_running_loop().time()
        if retry_after_s:
            self._paused_until = max(self._paused_until, now + retry_after_s)
        if self._limiter is None:
            # No rate was set: the pace so far was too fast for the server.
            elapsed_s = max(now - self._window_start, _MIN_PACE_WINDOW_S)
            self._limit_to(max(1.0, self._window_count / elapsed_s))
            self._min_cost = 1.0 / _MAX_CLIMB
        # Requests already in flight when we slowed down will be throttled
        # too; count one slow-down per bucket period, not one per answer.
        if now - self._last_change < self._period_s():
            return
        self._cost = min(_MAX_COST, self._cost * 2.0)
        self._last_change = now
        logger.debug("throttled: rate now %.1f/s", self.current_rate_per_s)

    def succeeded(self) -> None:
        """A request went through: recover towards the configured rate."""
        if self._cost <= self._min_cost:
            return
        now = asyncio.get_running_loop().time()
        if now - self._last_change >= _RECOVER_EVERY_S:
            self._cost = max(self._min_cost, self._cost * _RECOVER_STEP)
            self._last_change = now
            logger.debug("recovering: rate now %.1f/s", self.current_rate_per_s)

    def _period_s(self) -> float:
        if not self.rate_per_s:
            return 0.5
        return max(0.5, self._capacity * self._cost / self.rate_per_s)
