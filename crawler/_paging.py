"""Reading one listing (repositories, images or tags) completely.

A listing is read in passes.  A pass fetches the first page, learns
``TotalCount`` from it, then fetches the remaining pages concurrently.  The
server may serve fewer rows than asked (a silent cap), rows may be pushed or
deleted between pages, and ``TotalCount`` may be wrong, so a pass also checks
itself: it is *consistent* when every page reported the same ``TotalCount``,
no page repeated a row of the pass, no page came back empty early, and the
pass found exactly ``TotalCount`` distinct names.

A listing is settled by one consistent pass, or by two passes in a row that
found the same names.  Otherwise it is read again, up to ``max_passes``
times.  Rows are handed on as soon as they arrive, each name only once.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._client import ApiClient
from ._errors import TargetError, first_cause

__all__ = ["Listing", "read_listing"]

Rows = list[dict[str, Any]]


@dataclass(slots=True)
class Listing:
    """What to read, and what reading it found.

    ``seen`` holds every name handed on so far, over all passes; it is what
    keeps a name from being exported twice.
    """

    client: ApiClient
    action: str
    params: Mapping[str, object]
    set_key: str  # TagSet, ImageSet or RepoSet
    name_key: str  # TagName, ImageName or RepoName
    page_size: int
    fan_out: int  # most pages of this listing requested at once
    on_rows: Callable[[Rows], Awaitable[None]]
    seen: set[str] = field(default_factory=set)
    passes: int = 0


@dataclass(slots=True)
class _Pass:
    names: set[str] = field(default_factory=set)
    totals: set[int] = field(default_factory=set)
    repeats: bool = False  # a page repeated rows of this pass: rows moved
    gaps: bool = False  # a page came back empty before the end TotalCount gave
    # Pages are not asked for from here on: an empty page or a page of
    # repeats was met there, so nothing new lies beyond it in this pass.
    end: int = sys.maxsize

    def consistent(self) -> bool:
        return (
            not (self.repeats or self.gaps)
            and len(self.totals) == 1
            and len(self.names) == next(iter(self.totals))
        )


async def read_listing(listing: Listing, max_passes: int) -> bool:
    """Read ``listing`` until it settles; return whether it did.

    Two passes that found the same names agree only if neither repeated
    rows: a server that ignores Offset finds the same first page every time.
    """
    previous: set[str] | None = None
    while listing.passes < max_passes:
        listing.passes += 1
        if listing.passes > 1:
            listing.client.stats.repasses += 1
        result = await _read_pass(listing)
        if result.consistent() or (result.names == previous and not result.repeats):
            return True
        previous = None if result.repeats else result.names
    return False


async def _read_pass(listing: Listing) -> _Pass:
    result = _Pass()
    rows, total = await _fetch(listing, 0, listing.page_size, result)
    await _absorb(listing, result, rows)
    first = len(rows)
    if first == 0:
        result.gaps = total != 0
        return result
    if first > total:
        # More rows than TotalCount says there are: the count is wrong, so
        # page on until the rows run out.
        total = sys.maxsize
    # A short first page that is not the whole listing means the server caps
    # the page size: page at the size it really serves.
    step = listing.page_size if first >= min(listing.page_size, total) else first
    offsets = iter(range(first, total, step))
    workers = min(listing.fan_out, -(-(total - first) // step))
    if workers > 0:
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(workers):
                    group.create_task(_page_worker(listing, result, offsets, step))
        except BaseExceptionGroup as group_exc:
            # One page failed for good: the listing fails with its error.
            raise first_cause(group_exc) from None
    return result


async def _page_worker(
    listing: Listing, result: _Pass, offsets: Iterator[int], step: int
) -> None:
    for offset in offsets:
        if offset >= result.end:
            return
        await _read_span(listing, result, offset, step)


async def _read_span(listing: Listing, result: _Pass, offset: int, want: int) -> None:
    """Read ``want`` rows from ``offset``, continuing after short pages.

    Every request either brings rows new to the pass or ends the span, and
    an empty page or a page of repeats also ends the pass's paging at that
    offset, so a pass makes a bounded number of requests whatever
    ``TotalCount`` claims.
    """
    while want > 0 and offset < result.end:
        rows, total = await _fetch(listing, offset, want, result)
        if not rows:
            # Fewer rows than TotalCount promised: rows were deleted, or the
            # count is wrong.  Either way this pass cannot be trusted.
            result.gaps = result.gaps or offset < total
            result.end = min(result.end, offset)
            return
        if not await _absorb(listing, result, rows):
            result.end = min(result.end, offset)
            return
        if len(rows) >= want or offset + len(rows) >= total:
            return
        offset += len(rows)
        want -= len(rows)


async def _fetch(
    listing: Listing, offset: int, limit: int, result: _Pass
) -> tuple[Rows, int]:
    params = {**listing.params, "Offset": offset, "Limit": limit}
    doc = await listing.client.call(listing.action, params, expect=listing.set_key)
    total: int = doc["TotalCount"]
    result.totals.add(total)
    return doc[listing.set_key], total


async def _absorb(listing: Listing, result: _Pass, rows: Rows) -> int:
    """Record one page's rows; hand on the new ones; return how many were new
    to this pass."""
    if not rows:
        return 0
    try:
        names = [row[listing.name_key] for row in rows]
    except (KeyError, TypeError):
        names = []
    if not names or set(map(type, names)) != {str}:
        exc = TargetError(
            f"a row of {listing.set_key} has no {listing.name_key} string",
            action=listing.action,
        )
        exc.params = dict(listing.params)
        raise exc
    pass_names = result.names
    before = len(pass_names)
    pass_names.update(names)
    new_in_pass = len(pass_names) - before
    if new_in_pass != len(names):
        result.repeats = True
    seen = listing.seen
    if new_in_pass == len(names) and seen.isdisjoint(names):
        fresh = rows
        seen.update(names)
    else:
        fresh = []
        for row, name in zip(rows, names, strict=True):
            if name not in seen:
                seen.add(name)
                fresh.append(row)
    if fresh:
        await listing.on_rows(fresh)
    return new_in_pass
