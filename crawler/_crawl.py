"""The crawl: discovery of repositories and images feeding the tag readers.

Work flows through two bounded queues, so memory stays flat however large the
registry is::

    projects -> repository listings -> repo queue -> image listings
             -> image queue -> tag listings -> consumer

Every stage starts as soon as its queue has work: tags flow while the
repositories are still being listed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Protocol, Self

from ._client import ApiClient, Stats
from ._config import Config, CrawlConfig, require_keys
from ._errors import ApiError, FatalError, ProjectError, first_cause
from ._models import ImageRef, Tag
from ._paging import Listing, Rows, read_listing

__all__ = ["Consumer", "TagCrawler", "failure_record"]

logger = logging.getLogger(__name__)

_DONE = None  # queue sentinel: no more work
_PROGRESS_EVERY_S = 10.0  # how often -v reports progress


class Consumer(Protocol):
    """Where a crawl's results go."""

    async def rows(self, image: ImageRef, rows: Rows) -> None:
        """New tag rows (the API's TagSet dicts) of ``image``."""

    async def done(self, image: ImageRef, count: int) -> None:
        """Every tag of ``image`` has been handed to ``rows``."""

    async def failed(self, record: dict[str, Any]) -> None:
        """A target failed for good; ``record`` says which and why."""


def failure_record(exc: ApiError, message: str | None = None) -> dict[str, Any]:
    """The errors-sink line for a call that failed for good."""
    return {
        "action": exc.action,
        "params": {
            name: value
            for name, value in exc.params.items()
            if name not in ("Signature", "PublicKey")
        },
        "ret_code": exc.ret_code,
        "http_status": exc.http_status,
        "message": message or exc.message,
        "attempts": exc.attempts,
    }


def _make_listing(
    client: ApiClient,
    crawl: CrawlConfig,
    action: str,
    params: dict[str, object],
    noun: str,
    on_rows: Callable[[Rows], Awaitable[None]],
) -> Listing:
    """A listing of ``noun`` rows (``TagSet`` of ``TagName``s, and so on)."""
    return Listing(
        client=client,
        action=action,
        params=params,
        set_key=f"{noun}Set",
        name_key=f"{noun}Name",
        page_size=crawl.page_size,
        fan_out=crawl.concurrency,
        on_rows=on_rows,
    )


def _unsettled_record(listing: Listing) -> dict[str, Any]:
    """The errors-sink line for a listing that never settled; its rows were
    kept as found."""
    return {
        "action": listing.action,
        "params": dict(listing.params),
        "ret_code": None,
        "http_status": None,
        "message": f"the listing kept changing over {listing.passes} passes; "
        f"kept the {len(listing.seen)} names seen",
        "attempts": listing.passes,
    }


def _scope(project_id: str | None, **params: object) -> dict[str, object]:
    if project_id is not None:
        params["ProjectId"] = project_id
    return params


class _Crawl:
    """One run over the configured projects, handing results to a consumer."""

    def __init__(
        self,
        client: ApiClient,
        config: Config,
        consumer: Consumer,
        skip: Callable[[ImageRef], bool] = lambda image: False,
    ) -> None:
        self._client = client
        self._crawl = config.crawl
        self._consumer = consumer
        self._skip = skip
        self._failed_projects: set[str | None] = set()
        # Every image queued so far: an image named in crawl.images and found
        # again by listing its repository is read once.  Holds image names
        # only, far fewer than tags.
        self._queued: set[ImageRef] = set()
        workers = config.crawl.concurrency
        self._repo_workers = max(2, workers // 4)
        self._image_workers = workers
        self._repos: asyncio.Queue[tuple[str | None, str] | None] = asyncio.Queue(
            workers
        )
        self._images: asyncio.Queue[ImageRef | None] = asyncio.Queue(2 * workers)

    async def run(self) -> None:
        crawl = self._crawl
        logger.info(
            "crawling %s, %s, at most %s requests/s and %d in flight",
            ", ".join(crawl.projects) or "the default project",
            " and ".join(crawl.repo_types) + " repositories",
            f"{crawl.rate_per_s:g}" if crawl.rate_per_s else "unlimited",
            crawl.concurrency,
        )
        progress = asyncio.create_task(self._report_progress())
        try:
            await self._run()
        finally:
            progress.cancel()
        logger.info("crawl done: %s", self._client.stats.as_dict())

    async def _report_progress(self) -> None:
        stats = self._client.stats
        while True:
            await asyncio.sleep(_PROGRESS_EVERY_S)
            logger.info(
                "progress: %d tags of %d images, %d requests (%.1f/s), "
                "%d retries, %d throttled, %d failures",
                stats.tags,
                stats.images,
                stats.requests,
                stats.as_dict()["requests_per_s"],
                stats.retries,
                stats.throttled,
                stats.failures,
            )

    async def _run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                repo_tasks = [
                    group.create_task(self._repo_worker())
                    for _ in range(self._repo_workers)
                ]
                image_tasks = [
                    group.create_task(self._image_worker())
                    for _ in range(self._image_workers)
                ]
                await self._discover()
                await self._finish(self._repos, repo_tasks)
                await self._finish(self._images, image_tasks)
        except BaseExceptionGroup as group_exc:
            raise first_cause(group_exc) from None

    @staticmethod
    async def _finish(
        queue: asyncio.Queue[Any], workers: list[asyncio.Task[None]]
    ) -> None:
        """Tell ``workers`` there is no more work, and wait for them."""
        for _ in workers:
            await queue.put(_DONE)
        await asyncio.gather(*workers)

    async def _discover(self) -> None:
        projects: Iterable[str | None] = dict.fromkeys(self._crawl.projects or (None,))
        async with asyncio.TaskGroup() as group:
            for project_id in projects:
                group.create_task(self._discover_project(project_id))

    async def _discover_project(self, project_id: str | None) -> None:
        crawl = self._crawl
        for repo_name, image_name in crawl.images:
            await self._queue_image(ImageRef(project_id, repo_name, image_name))
        for repo_name in dict.fromkeys(crawl.repos):
            await self._repos.put((project_id, repo_name))
        if crawl.images or crawl.repos:
            return
        async with asyncio.TaskGroup() as group:
            for repo_type in crawl.repo_types:
                listing = self._list_repos(project_id, repo_type)
                group.create_task(self._guarded(project_id, listing))

    async def _queue_image(self, image: ImageRef) -> None:
        if image not in self._queued:
            self._queued.add(image)
            await self._images.put(image)

    async def _list_repos(self, project_id: str | None, repo_type: str) -> None:
        async def found(rows: Rows) -> None:
            self._client.stats.repos += len(rows)
            for row in rows:
                await self._repos.put((project_id, row["RepoName"]))

        params = _scope(project_id, Type=repo_type)
        await self._read(self._listing("GetRepo", params, "Repo", found))

    async def _repo_worker(self) -> None:
        while (item := await self._repos.get()) is not _DONE:
            project_id, repo_name = item
            if project_id in self._failed_projects:
                continue

            async def found(
                rows: Rows, project_id: str | None = project_id, repo: str = repo_name
            ) -> None:
                for row in rows:
                    await self._queue_image(
                        ImageRef(project_id, repo, row["ImageName"])
                    )

            params = _scope(project_id, RepoName=repo_name)
            listing = self._listing("GetRepoImage", params, "Image", found)
            await self._guarded(project_id, self._read(listing))

    async def _image_worker(self) -> None:
        while (image := await self._images.get()) is not _DONE:
            if image.project_id in self._failed_projects or self._skip(image):
                continue
            await self._guarded(image.project_id, self._read_image(image))

    async def _read_image(self, image: ImageRef) -> None:
        consumer = self._consumer

        async def found(rows: Rows) -> None:
            self._client.stats.tags += len(rows)
            await consumer.rows(image, rows)

        params = _scope(
            image.project_id, RepoName=image.repo_name, ImageName=image.image_name
        )
        listing = self._listing("GetImageTag", params, "Tag", found)
        if await self._read(listing):
            self._client.stats.images += 1
            await consumer.done(image, len(listing.seen))

    def _listing(
        self,
        action: str,
        params: dict[str, object],
        noun: str,
        on_rows: Callable[[Rows], Awaitable[None]],
    ) -> Listing:
        return _make_listing(self._client, self._crawl, action, params, noun, on_rows)

    async def _read(self, listing: Listing) -> bool:
        """Read a listing to the end; a listing that never settles is kept as
        found and reported as a failure."""
        if await read_listing(listing, self._crawl.max_passes):
            return True
        record = _unsettled_record(listing)
        logger.warning("%s %s: %s", listing.action, record["params"], record["message"])
        self._client.stats.failures += 1
        await self._consumer.failed(record)
        return False

    async def _guarded(self, project_id: str | None, work: Awaitable[Any]) -> None:
        """Run one target; its failure is recorded and the crawl goes on."""
        try:
            await work
        except ProjectError as exc:
            await self._project_failed(project_id, exc)
        except FatalError:
            raise
        except ApiError as exc:
            logger.warning("giving up on %s %s: %s", exc.action, exc.params, exc)
            self._client.stats.failures += 1
            await self._consumer.failed(failure_record(exc))

    async def _project_failed(self, project_id: str | None, exc: ApiError) -> None:
        if project_id in self._failed_projects:
            return
        self._failed_projects.add(project_id)
        logger.warning("giving up on project %s: %s", project_id or "(default)", exc)
        self._client.stats.failures += 1
        await self._consumer.failed(failure_record(exc))


class _QueueConsumer:
    """Turns the crawl into ``Tag`` records for an ``async for`` loop.

    The queue itself is unbounded so that the end-of-crawl marker can always
    be put; ``_room`` bounds the batches waiting in it.
    """

    def __init__(self, failures: list[dict[str, Any]]) -> None:
        self.queue: asyncio.Queue[list[Tag] | None] = asyncio.Queue()
        self._room = asyncio.Semaphore(64)
        self._failures = failures

    async def get(self) -> list[Tag] | None:
        batch = await self.queue.get()
        self._room.release()
        return batch

    def close(self) -> None:
        self._room.release()  # the marker's slot, taken back by get()
        self.queue.put_nowait(None)

    async def rows(self, image: ImageRef, rows: Rows) -> None:
        await self._room.acquire()
        self.queue.put_nowait(_to_tags(image, rows))

    async def done(self, image: ImageRef, count: int) -> None:
        pass

    async def failed(self, record: dict[str, Any]) -> None:
        self._failures.append(record)


def _to_tags(image: ImageRef, rows: Rows) -> list[Tag]:
    project_id, repo_name, image_name = (
        image.project_id,
        image.repo_name,
        image.image_name,
    )
    return [
        Tag(
            project_id,
            repo_name,
            image_name,
            row["TagName"],
            row.get("Digest"),
            row.get("UpdateTime"),  # type: ignore[arg-type]
        )
        for row in rows
    ]


class TagCrawler:
    """Crawl a registry's image tags.

    ::

        async with TagCrawler(config) as crawler:
            async for tag in crawler.tags():
                print(tag.repo_name, tag.image_name, tag.tag_name)

    Targets that fail for good are skipped and listed in ``failures``; a
    ``FatalError`` (refused keys, unreachable endpoint) ends the iteration.
    ``stats`` counts requests, retries, tags and more as the crawl goes.
    """

    def __init__(self, config: Config, *, stats: Stats | None = None) -> None:
        require_keys(config)
        self.config = config
        self.stats = stats if stats is not None else Stats()
        self.failures: list[dict[str, Any]] = []
        self._client = ApiClient(config.api, config.crawl, self.stats)
        self._feeds: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        await self._client.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A tags() loop left early keeps its crawl running until the
        # generator is closed; leaving the crawler ends it for good.
        for feed in self._feeds:
            feed.cancel()
        await asyncio.gather(*self._feeds, return_exceptions=True)
        await self._client.__aexit__(exc_type, exc, tb)

    async def run(
        self,
        consumer: Consumer,
        skip: Callable[[ImageRef], bool] = lambda image: False,
    ) -> None:
        """Crawl everything configured into ``consumer``; images for which
        ``skip`` returns true are left out (used to resume a crawl)."""
        await _Crawl(self._client, self.config, consumer, skip).run()

    async def tags(self) -> AsyncIterator[Tag]:
        """Every tag of the configured projects, as they arrive."""
        consumer = _QueueConsumer(self.failures)
        crawl = asyncio.create_task(self._feed(consumer))
        self._feeds.add(crawl)
        crawl.add_done_callback(self._feeds.discard)
        try:
            while (batch := await consumer.get()) is not None:
                for tag in batch:
                    yield tag
            await crawl  # re-raise what stopped the crawl, if anything
        finally:
            if not crawl.done():
                crawl.cancel()
                await asyncio.gather(crawl, return_exceptions=True)

    async def _feed(self, consumer: _QueueConsumer) -> None:
        try:
            await self.run(consumer)
        finally:
            consumer.close()

    async def image_tags(
        self,
        repo_name: str,
        image_name: str,
        *,
        project_id: str | None = None,
        tag_name: str | None = None,
    ) -> list[Tag]:
        """Every tag of one image (or just ``tag_name``), read completely.

        If the listing never settled, the tags seen are returned and a
        record is added to ``failures``."""
        tags: list[Tag] = []
        image = ImageRef(project_id, repo_name, image_name)

        async def found(rows: Rows) -> None:
            tags.extend(_to_tags(image, rows))

        params = _scope(project_id, RepoName=repo_name, ImageName=image_name)
        if tag_name is not None:
            params["TagName"] = tag_name
        crawl = self.config.crawl
        listing = _make_listing(
            self._client, crawl, "GetImageTag", params, "Tag", found
        )
        if not await read_listing(listing, crawl.max_passes):
            self.failures.append(_unsettled_record(listing))
        self.stats.tags += len(tags)
        return tags
