"""The ideal crawl of a simulated registry: how many requests it takes.

The simulator builds a registry deterministically from its seed and tag
count, so the benchmark builds the same one here (cheaply: tags are generated
only when asked for) and counts the pages a perfect client must fetch.
"""

from __future__ import annotations

from crawler._simulator import SimRegistry

__all__ = ["ideal_requests", "registry_for_requests"]

_MAX_STEPS = 1_000  # registry sizes tried before giving up


def _pages(row_count: int, page_size: int) -> int:
    """Pages to read a listing: an empty one still takes one request."""
    return max(1, -(-row_count // page_size))


def ideal_requests(registry: SimRegistry, page_size: int) -> int:
    """Requests to list every repository, image and tag of every project,
    one request per page of ``page_size`` rows."""
    requests = 0
    # The simulator has no public walk of its structure; this one is read-only.
    for project in registry._projects.values():
        for repos in project.by_kind.values():
            requests += _pages(len(repos), page_size)
            for repo in repos:
                requests += _pages(len(repo.image_list), page_size)
                requests += sum(
                    _pages(image.tag_count, page_size) for image in repo.image_list
                )
    return requests


def registry_for_requests(
    seed: int, min_requests: int, page_size: int
) -> tuple[int, int]:
    """A tag count, in thousands, whose registry takes at least
    ``min_requests`` requests; returns it with its request count.

    The search starts below the usual 40-odd tags per request and climbs.
    """
    start = max(1_000, min_requests * 40 // 1_000 * 1_000)
    for tags in range(start, start + 1_000 * _MAX_STEPS, 1_000):
        requests = ideal_requests(SimRegistry(seed, tags), page_size)
        if requests >= min_requests:
            return tags, requests
    raise ValueError(f"no registry below {tags:,} tags takes {min_requests:,} requests")
