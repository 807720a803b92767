"""The naive export the crawler replaces: one request at a time, a fresh
connection per call.

This is the loop a plain SDK invites: list the repositories, then each
repository's images, then each image's tags, each listing paged one page
after the other with ``urllib`` (which opens and closes a connection per
call).  It makes the same requests as the crawler, signed the same way.
"""

from __future__ import annotations

import argparse
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import orjson
from _child import run_measured

from crawler._signing import sign

_TIMEOUT_S = 30.0
# No proxy from the environment: requests go straight to the loopback server.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class SequentialCrawl:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.url = args.endpoint.rstrip("/") + "/"
        self.requests = self.errors = 0

    def call(self, action: str, params: dict[str, object]) -> dict[str, Any]:
        signed: dict[str, object] = {"Action": action, **params}
        signed["PublicKey"] = self.args.public_key
        signed["Signature"] = sign(signed, self.args.private_key)
        query = urlencode(signed, quote_via=quote, safe="")
        self.requests += 1
        with _OPENER.open(f"{self.url}?{query}", timeout=_TIMEOUT_S) as r:
            doc: dict[str, Any] = orjson.loads(r.read())
        if doc.get("RetCode") != 0:
            self.errors += 1
        return doc

    def listing(
        self, action: str, params: dict[str, object], set_key: str
    ) -> Iterator[dict[str, Any]]:
        """Every row of one listing, page after page."""
        offset, total = 0, 1
        page_size = self.args.page_size
        while offset < total:
            doc = self.call(action, {**params, "Offset": offset, "Limit": page_size})
            total = doc.get("TotalCount", 0)
            yield from doc.get(set_key, [])
            offset += page_size

    def run(self) -> int:
        tags = 0
        for project_id in self.args.project:
            scope = {"ProjectId": project_id}
            for repo_type in ("private", "public"):
                repos = self.listing("GetRepo", {"Type": repo_type, **scope}, "RepoSet")
                for repo in repos:
                    repo_scope = {"RepoName": repo["RepoName"], **scope}
                    images = self.listing("GetRepoImage", repo_scope, "ImageSet")
                    for image in images:
                        image_scope = {"ImageName": image["ImageName"], **repo_scope}
                        rows = self.listing("GetImageTag", image_scope, "TagSet")
                        tags += sum(1 for _ in rows)
        return tags


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--project", action="append", required=True)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--public-key", required=True)
    parser.add_argument("--private-key", required=True)
    args = parser.parse_args()
    if urlsplit(args.endpoint).hostname != "127.0.0.1":
        parser.error(f"--endpoint {args.endpoint!r} is not on 127.0.0.1")
    return args


def _work(args: argparse.Namespace) -> dict[str, Any]:
    crawl = SequentialCrawl(args)
    tags = crawl.run()
    return {"requests": crawl.requests, "tags": tags, "errors": crawl.errors}


if __name__ == "__main__":
    arguments = _parse_args()
    run_measured(lambda: _work(arguments))
