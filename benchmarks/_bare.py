"""The floor for CPU per page: a bare aiohttp loop making the crawler's requests.

It asks for exactly the pages the crawler asks for on a quiet server (every
repository listing of each project, every image listing, every tag page, one
request per page of ``--page-size`` rows), signs them the same way, sends them
as the same GET query strings over ``--connections`` keep-alive connections,
and parses each answer with orjson.  It does nothing else: no retries, no
consistency checks, no de-duplication.  With ``--export PATH`` it also writes
each tag as a JSON line, the plain way (one dict and one ``orjson.dumps`` per
tag), so the crawler can be compared with a loop doing the whole job.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import orjson
from _child import run_measured
from yarl import URL

from crawler._signing import sign

# A job is one page: (action, scope parameters, offset).
Job = tuple[str, dict[str, object], int]

# What each listing's rows lead to: the rows' key and the next listing.
_SET_KEY = {"GetRepo": "RepoSet", "GetRepoImage": "ImageSet", "GetImageTag": "TagSet"}


class BareCrawl:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.url = args.endpoint.rstrip("/") + "/"
        self.jobs: asyncio.Queue[Job | None] = asyncio.Queue()
        self.pending = 0  # jobs queued or running; the crawl ends at zero
        self.requests = self.tags = self.errors = 0
        self.export = open(args.export, "wb", 1 << 18) if args.export else None

    def submit(self, job: Job) -> None:
        self.pending += 1
        self.jobs.put_nowait(job)

    async def run(self) -> None:
        for project_id in self.args.project:
            for repo_type in ("private", "public"):
                scope = {"Type": repo_type, "ProjectId": project_id}
                self.submit(("GetRepo", scope, 0))
        connector = aiohttp.TCPConnector(limit=self.args.connections)
        async with aiohttp.ClientSession(connector=connector) as session:
            workers = [self.worker(session) for _ in range(self.args.connections)]
            await asyncio.gather(*workers)

    async def worker(self, session: aiohttp.ClientSession) -> None:
        while (job := await self.jobs.get()) is not None:
            doc = await self.fetch(session, job)
            self.expand(job, doc)
            self.pending -= 1
            if self.pending == 0:
                for _ in range(self.args.connections):
                    self.jobs.put_nowait(None)

    async def fetch(self, session: aiohttp.ClientSession, job: Job) -> dict[str, Any]:
        action, scope, offset = job
        signed: dict[str, object] = {"Action": action, **scope}
        signed.update(Offset=offset, Limit=self.args.page_size)
        signed["PublicKey"] = self.args.public_key
        signed["Signature"] = sign(signed, self.args.private_key)
        query = urlencode(signed, quote_via=quote, safe="")
        self.requests += 1
        async with session.get(URL(f"{self.url}?{query}", encoded=True)) as response:
            body = await response.read()
        doc: dict[str, Any] = orjson.loads(body)
        return doc

    def expand(self, job: Job, doc: dict[str, Any]) -> None:
        action, scope, offset = job
        if doc.get("RetCode") != 0:
            self.errors += 1
            return
        if offset == 0:
            page_size = self.args.page_size
            for later in range(page_size, doc["TotalCount"], page_size):
                self.submit((action, scope, later))
        for next_job in self.follow(action, scope, doc[_SET_KEY[action]]):
            self.submit(next_job)

    def follow(
        self, action: str, scope: dict[str, object], rows: list[dict[str, Any]]
    ) -> Iterator[Job]:
        project = {"ProjectId": scope["ProjectId"]}
        if action == "GetRepo":
            for row in rows:
                yield "GetRepoImage", {"RepoName": row["RepoName"], **project}, 0
        elif action == "GetRepoImage":
            for row in rows:
                names = {"RepoName": row["RepoName"], "ImageName": row["ImageName"]}
                yield "GetImageTag", {**names, **project}, 0
        else:
            self.tags += len(rows)
            if self.export is not None:
                self.write(scope, rows)

    def write(self, scope: dict[str, object], rows: list[dict[str, Any]]) -> None:
        assert self.export is not None
        for row in rows:
            line = {
                "project_id": scope["ProjectId"],
                "repo_name": scope["RepoName"],
                "image_name": scope["ImageName"],
                "tag_name": row["TagName"],
                "digest": row.get("Digest"),
                "update_time": row.get("UpdateTime"),
            }
            self.export.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--project", action="append", required=True)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--public-key", required=True)
    parser.add_argument("--private-key", required=True)
    parser.add_argument("--export", help="also write the tags as JSON Lines here")
    args = parser.parse_args()
    if urlsplit(args.endpoint).hostname != "127.0.0.1":
        parser.error(f"--endpoint {args.endpoint!r} is not on 127.0.0.1")
    return args


def _work(args: argparse.Namespace) -> dict[str, Any]:
    crawl = BareCrawl(args)
    asyncio.run(crawl.run())
    if crawl.export is not None:
        crawl.export.close()
    return {"requests": crawl.requests, "tags": crawl.tags, "errors": crawl.errors}


if __name__ == "__main__":
    arguments = _parse_args()
    run_measured(lambda: _work(arguments))
