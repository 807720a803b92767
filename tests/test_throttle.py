"""The shared rate: spacing from the first request, slow-down and recovery,
on a clock the test moves by hand (no sleeping, no timing)."""

from __future__ import annotations

import asyncio

import pytest

from crawler._throttle import AdaptiveRate


class Clock:
    """Replaces the running loop's clock; timers fire when it is moved."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 4_096.0  # binary-exact, like every step below
        monkeypatch.setattr(asyncio.get_running_loop(), "time", lambda: self.now)

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        for _ in range(20):  # let every woken waiter run
            await asyncio.sleep(0)


async def _admitted_over_time(
    rate: AdaptiveRate, clock: Clock, requests: int, step_s: float, steps: int
) -> list[int]:
    """Start ``requests`` acquirers; return how many got through after each
    step of the clock."""
    passed = 0

    async def one() -> None:
        nonlocal passed
        await rate.acquire()
        passed += 1

    tasks = [asyncio.create_task(one()) for _ in range(requests)]
    counts = []
    await clock.advance(0)
    counts.append(passed)
    for _ in range(steps):
        await clock.advance(step_s)
        counts.append(passed)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return counts


async def test_no_burst_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    rate = AdaptiveRate(128.0)  # one request per 1/128 s
    counts = await _admitted_over_time(rate, clock, 50, 1 / 128, 20)
    # At time t no more than t * 128 requests have gone: none at once, one
    # more each 1/128 s, although 50 were waiting from the start.
    assert counts == list(range(21))


async def test_steady_rate_uses_the_whole_allowance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock(monkeypatch)
    rate = AdaptiveRate(128.0)
    counts = await _admitted_over_time(rate, clock, 300, 1 / 64, 128)
    assert counts[-1] == 256  # two seconds at 128/s: not one request lost
    assert counts[64] == 128


async def test_a_late_wake_up_loses_no_capacity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The loop gets round to the limiter only every 31 ms (a busy process):
    # the bucket's 50 ms of headroom lets the backlog through at once, so the
    # average rate holds.
    clock = Clock(monkeypatch)
    rate = AdaptiveRate(128.0)
    counts = await _admitted_over_time(rate, clock, 300, 1 / 32, 64)
    assert counts[32] == 128
    assert counts[-1] == 256


async def test_throttling_slows_the_flow(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    rate = AdaptiveRate(128.0)
    rate.throttled(None)  # halve: 64/s
    counts = await _admitted_over_time(rate, clock, 200, 1 / 64, 64)
    assert counts[-1] == 64  # one second at half the configured rate


async def test_no_rate_set_means_the_pace_reached_until_throttled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock(monkeypatch)
    rate = AdaptiveRate(0)
    for _ in range(256):  # 256 requests in the first two seconds: no waiting
        await rate.acquire()
        await clock.advance(2 / 256)
    assert rate.current_rate_per_s == 0  # no limit yet
    rate.throttled(None)
    # The pace reached, 128/s, halved.
    assert rate.rate_per_s == 128.0
    assert rate.current_rate_per_s == 64.0
    counts = await _admitted_over_time(rate, clock, 200, 1 / 64, 64)
    assert counts[-1] == 64
