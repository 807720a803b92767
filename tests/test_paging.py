"""Paging arithmetic: how many requests a listing takes, and that none is lost.

The first half drives ``read_listing`` with a scripted listing server, so the
exact (Offset, Limit) of every request can be asserted.  The second half
crawls the simulator over loopback and counts requests in its stats.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import pytest
from conftest import (
    LAYOUT,
    LAYOUT_REPO_TYPES,
    LAYOUT_TAG_COUNTS,
    StartSim,
    make_config,
    sort_rows,
)

from crawler import Stats, TagCrawler
from crawler._paging import Listing, read_listing
from crawler._simulator import SimRegistry


def names(count: int, prefix: str = "t") -> list[str]:
    return [f"{prefix}{index:05d}" for index in range(count)]


class ListServer:
    """Serves a list of tag names page by page, the way the API does.

    ``cap(offset)`` is the most rows served for a page at ``offset`` (a silent
    Limit cap); ``total`` overrides the TotalCount reported; ``before_call``
    may change ``names`` between requests.
    """

    def __init__(
        self,
        rows: list[str],
        *,
        cap: Callable[[int], int] | None = None,
        total: int | None = None,
        before_call: Callable[[ListServer], None] | None = None,
    ) -> None:
        self.names = rows
        self.cap = cap
        self.total = total
        self.before_call = before_call
        self.calls: list[tuple[int, int]] = []
        self.stats = Stats()
        self.in_flight = 0
        self.most_in_flight = 0

    async def call(
        self, action: str, params: dict[str, Any], expect: str | None = None
    ) -> dict[str, Any]:
        assert (action, expect) == ("GetImageTag", "TagSet")
        if self.before_call is not None:
            self.before_call(self)
        offset, limit = params["Offset"], params["Limit"]
        self.calls.append((offset, limit))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0)  # other pages of the pass go out meanwhile
        self.in_flight -= 1
        if self.cap is not None:
            limit = min(limit, self.cap(offset))
        page = self.names[offset : offset + limit]
        total = len(self.names) if self.total is None else self.total
        rows = [{"TagName": name} for name in page]
        return {"RetCode": 0, "TotalCount": total, "TagSet": rows}


async def read(
    server: ListServer, page_size: int, fan_out: int = 8, max_passes: int = 4
) -> tuple[bool, list[str], Listing]:
    """Read the server's listing; return whether it settled, the names handed
    on (in order, repeats kept) and the listing."""
    handed_on: list[str] = []

    async def on_rows(rows: list[dict[str, Any]]) -> None:
        handed_on.extend(row["TagName"] for row in rows)

    listing = Listing(
        client=server,  # type: ignore[arg-type]
        action="GetImageTag",
        params={"RepoName": "web", "ImageName": "api"},
        set_key="TagSet",
        name_key="TagName",
        page_size=page_size,
        fan_out=fan_out,
        on_rows=on_rows,
    )
    settled = await read_listing(listing, max_passes)
    return settled, handed_on, listing


# ---------------------------------------------------------------- by hand


async def test_pages_follow_total_count() -> None:
    server = ListServer(names(95))
    settled, handed_on, listing = await read(server, page_size=10)
    assert settled
    assert sorted(server.calls) == [(offset, 10) for offset in range(0, 95, 10)]
    assert server.calls[0] == (0, 10)  # TotalCount is learnt from the first
    assert sorted(handed_on) == names(95)
    assert len(handed_on) == 95
    assert listing.passes == 1


@pytest.mark.parametrize(
    ("total", "page_size", "cap", "requests"),
    [
        (0, 10, None, 1),
        (1, 10, None, 1),
        (10, 10, None, 1),
        (11, 10, None, 2),
        (95, 10, None, 10),
        (100, 100, None, 1),
        (101, 100, None, 2),
        (10, 1, None, 10),
        (5_000, 100, None, 50),
        (5_000, 10_000, None, 1),
        # A silent cap: the first page shows the size really served, and the
        # rest is paged at that size: 1 + ceil((total - first) / served).
        (95, 10, 4, 1 + math.ceil(91 / 4)),
        (5, 10, 3, 2),
        (5_000, 1_000, 300, 1 + math.ceil(4_700 / 300)),
        (5_000, 100, 1, 5_000),
        (3, 10, 5, 1),  # the cap is above the whole listing: nothing to see
    ],
)
async def test_request_count(
    total: int, page_size: int, cap: int | None, requests: int
) -> None:
    server = ListServer(names(total), cap=None if cap is None else lambda _: cap)
    settled, handed_on, _ = await read(server, page_size=page_size)
    assert settled
    assert len(server.calls) == requests
    assert sorted(handed_on) == names(total)
    assert len(handed_on) == total


async def test_a_capped_first_page_sets_the_page_size() -> None:
    server = ListServer(names(95), cap=lambda _: 4)
    await read(server, page_size=10)
    assert server.calls[0] == (0, 10)
    assert sorted(server.calls[1:]) == [(offset, 4) for offset in range(4, 95, 4)]


async def test_a_short_page_later_on_continues_where_it_ended() -> None:
    # Full pages at first, then at most 6 rows a page from offset 30 on.
    server = ListServer(names(62), cap=lambda offset: 10 if offset < 30 else 6)
    settled, handed_on, listing = await read(server, page_size=10)
    assert settled
    assert listing.passes == 1
    assert sorted(handed_on) == names(62)
    assert len(handed_on) == 62
    # Every short page is followed by a request for the rest of its span.
    assert sorted(server.calls) == [
        (0, 10),
        (10, 10),
        (20, 10),
        (30, 10),
        (36, 4),
        (40, 10),
        (46, 4),
        (50, 10),
        (56, 4),
        (60, 10),
    ]


async def test_an_empty_listing_takes_one_request() -> None:
    server = ListServer([])
    settled, handed_on, listing = await read(server, page_size=100)
    assert settled
    assert server.calls == [(0, 100)]
    assert handed_on == []
    assert listing.passes == 1


async def test_a_total_count_too_high_is_read_twice_then_settles() -> None:
    server = ListServer(names(10), total=12)
    settled, handed_on, listing = await read(server, page_size=10)
    assert settled  # two passes found the same names
    assert listing.passes == 2
    assert server.stats.repasses == 1
    assert server.calls == [(0, 10), (10, 10), (0, 10), (10, 10)]
    assert handed_on == names(10)  # each name handed on once


async def test_a_push_while_paging_loses_and_repeats_nothing() -> None:
    def push_after_first_page(server: ListServer) -> None:
        if len(server.calls) == 1:
            server.names.insert(0, "new")

    server = ListServer(names(20), before_call=push_after_first_page)
    settled, handed_on, listing = await read(server, page_size=10)
    assert settled
    assert listing.passes == 2
    assert sorted(handed_on) == sorted(["new", *names(20)])
    assert len(handed_on) == 21


async def test_fan_out_bounds_the_pages_in_flight() -> None:
    server = ListServer(names(1_000))
    await read(server, page_size=10, fan_out=3)
    assert server.most_in_flight == 3
    assert len(server.calls) == 100


# ---------------------------------------------------------------- simulator


def pages(total: int, page_size: int, cap: int | None) -> int:
    """Requests to read a listing of ``total`` rows: one for the first page,
    then the rest at the size the server really serves."""
    served = page_size if cap is None else min(page_size, cap)
    first = min(served, total)
    return 1 + math.ceil((total - first) / served)


def expected_requests(
    projects: tuple[str, ...], page_size: int, cap: int | None
) -> dict[str, int]:
    repo_listings = [
        sum(
            1
            for (project, _), kind in LAYOUT_REPO_TYPES.items()
            if project == project_id and kind == repo_type
        )
        for project_id in projects
        for repo_type in ("private", "public")
    ]
    image_listings = [
        len(spec["images"])
        for project_id in projects
        for spec in LAYOUT[project_id].values()
    ]
    tag_listings = [
        count
        for (project_id, _, _), count in LAYOUT_TAG_COUNTS.items()
        if project_id in projects
    ]
    return {
        "GetRepo": sum(pages(n, page_size, cap) for n in repo_listings),
        "GetRepoImage": sum(pages(n, page_size, cap) for n in image_listings),
        "GetImageTag": sum(pages(n, page_size, cap) for n in tag_listings),
    }


@pytest.mark.parametrize(
    ("page_size", "cap"),
    [(100, None), (50, 7), (1_000, 300), (3, 1), (10_000, None), (2, None)],
)
async def test_requests_per_listing_over_loopback(
    start_sim: StartSim,
    layout_registry: SimRegistry,
    page_size: int,
    cap: int | None,
) -> None:
    sim = await start_sim(layout_registry, limit_cap=cap)
    projects = ("acme", "other")
    config = make_config(sim.url, projects=projects, page_size=page_size)
    async with TagCrawler(config) as crawler:
        rows = [tag.to_dict() async for tag in crawler.tags()]
    assert sort_rows(rows) == layout_registry.truth_rows("current")
    expected = expected_requests(projects, page_size, cap)
    assert dict(sim.stats.requests) == expected
    assert crawler.stats.requests == sum(expected.values())
    assert (crawler.stats.retries, crawler.stats.repasses) == (0, 0)
    assert crawler.failures == []


def big_image_truth(registry: SimRegistry) -> list[dict[str, Any]]:
    return [row for row in registry.truth_rows("current") if row["image_name"] == "big"]


@pytest.mark.parametrize(
    ("page_size", "cap", "requests"),
    [
        (100, None, 50),
        (1_000, None, 5),
        (10_000, None, 1),
        (7, None, 715),
        (1_000, 300, 1 + math.ceil(4_700 / 300)),
        (100, 64, 1 + math.ceil(4_936 / 64)),
    ],
)
async def test_a_single_5000_tag_image(
    start_sim: StartSim,
    layout_registry: SimRegistry,
    page_size: int,
    cap: int | None,
    requests: int,
) -> None:
    sim = await start_sim(layout_registry, limit_cap=cap)
    config = make_config(
        sim.url, projects=("acme",), images=(("web", "big"),), page_size=page_size
    )
    async with TagCrawler(config) as crawler:
        rows = [tag.to_dict() async for tag in crawler.tags()]
    truth = big_image_truth(layout_registry)
    assert len(truth) == 5_000
    assert sorted(rows, key=lambda r: r["tag_name"]) == truth
    assert dict(sim.stats.requests) == {"GetImageTag": requests}
    assert crawler.stats.images == 1
    assert crawler.stats.tags == 5_000


async def test_an_empty_image_takes_one_request(
    start_sim: StartSim, layout_registry: SimRegistry
) -> None:
    sim = await start_sim(layout_registry)
    config = make_config(sim.url, projects=("acme",), images=(("web", "empty"),))
    async with TagCrawler(config) as crawler:
        rows = [tag async for tag in crawler.tags()]
    assert rows == []
    assert dict(sim.stats.requests) == {"GetImageTag": 1}
    assert (crawler.stats.images, crawler.stats.tags) == (1, 0)
    assert crawler.failures == []


async def test_image_tags_of_a_capped_big_image(
    start_sim: StartSim, layout_registry: SimRegistry
) -> None:
    sim = await start_sim(layout_registry, limit_cap=250)
    config = make_config(sim.url, page_size=1_000)
    async with TagCrawler(config) as crawler:
        tags = await crawler.image_tags("web", "big", project_id="acme")
    assert len(tags) == 5_000
    assert len({tag.tag_name for tag in tags}) == 5_000
    truth = big_image_truth(layout_registry)
    assert sorted((tag.to_dict() for tag in tags), key=lambda r: r["tag_name"]) == truth
    assert dict(sim.stats.requests) == {"GetImageTag": 1 + math.ceil(4_750 / 250)}
