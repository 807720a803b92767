"""An embedded registry simulator, served over HTTP by aiohttp.

The simulator speaks the registry's Action-style API (one path, ``/``, signed
parameters, JSON answers carrying a ``RetCode``) over a synthetic registry that
is built deterministically from a seed. It lets a new user try the crawler with
no account, and lets tests and benchmarks run against a real socket.

Switches in :class:`SimOptions` make it behave like a difficult production
service: added latency, a rate limit, injected faults, a silent page-size cap
and drift (tags pushed or deleted while a client is paging). The registry keeps
the ground truth of every view a test may want to compare an export with.

    registry = SimRegistry(seed=7, total_tags=12_000)
    async with SimServer(registry, SimOptions(fault_rate=0.05)) as sim:
        ...  # point a client at sim.url, then read sim.stats
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import email.utils
import hmac
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal

import orjson
from aiohttp import web

from crawler._signing import format_value, sign

__all__ = [
    "DEFAULT_FAULTS",
    "DEFAULT_PROJECT_ID",
    "DEMO_PRIVATE_KEY",
    "DEMO_PUBLIC_KEY",
    "FAULT_KINDS",
    "SECOND_PROJECT_ID",
    "TRUTH_VIEWS",
    "SimOptions",
    "SimRegistry",
    "SimServer",
    "SimStats",
    "add_arguments",
    "create_app",
    "options_from_args",
    "serve",
]

DEMO_PUBLIC_KEY = "demo-public-key"
DEMO_PRIVATE_KEY = "demo-private-key"
DEFAULT_PROJECT_ID = "org-default"
SECOND_PROJECT_ID = "org-ml"

FAULT_KINDS: tuple[str, ...] = (
    "reset",
    "short_body",
    "html_200",
    "http_502",
    "http_503",
    "http_504",
    "retcode_150",
    "retcode_153",
    "http_429",
    "http_429_date",
    "hang",
)
# A hung request costs a client its whole timeout, so it is opt-in.
DEFAULT_FAULTS: tuple[str, ...] = tuple(k for k in FAULT_KINDS if k != "hang")
TRUTH_VIEWS: tuple[str, ...] = ("current", "stable", "ever")
REPO_TYPES: tuple[str, ...] = ("private", "public")

_RET_OK = 0
_RET_BUSY = 150
_RET_RATE_LIMITED = 153
_RET_NO_ACTION = 160
_RET_UNKNOWN_ACTION = 161
_RET_NO_SIGNATURE = 170
_RET_BAD_SIGNATURE = 171
_RET_UNKNOWN_KEY = 172
_RET_MISSING_PARAM = 230
_RET_INVALID_PARAM = 231
_RET_NOT_FOUND = 240
_RET_NO_PROJECT = 292

_DEFAULT_LIMIT = 20
_DAY_S = 86_400
# Every timestamp is relative to a fixed moment so a seed always yields the
# same registry, whatever day the simulator runs.
_BASE_EPOCH = calendar.timegm((2026, 3, 1, 12, 0, 0, 0, 0, 0))
# An image's tags are spread over about this much history, whatever their count.
_HISTORY_S = 730 * _DAY_S
_NO_DIGEST_RATE = 0.03
_INT_TIME_RATE = 0.04


# ---------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class SimOptions:
    """How the simulator misbehaves. The defaults make a perfect server.

    ``faults`` lists the kinds in :data:`FAULT_KINDS` that ``fault_rate`` draws
    from. ``rate_limit_burst`` defaults to a tenth of a second's worth of
    requests, at least one. ``seed`` drives latency jitter, faults and drift,
    so a run against one server is reproducible.
    """

    latency_ms: float = 0.0
    rate_limit: float | None = None
    rate_limit_mode: Literal["retcode", "http"] = "retcode"
    rate_limit_burst: float | None = None
    fault_rate: float = 0.0
    faults: tuple[str, ...] = DEFAULT_FAULTS
    limit_cap: int | None = None
    drift: float = 0.0
    seed: int = 0
    accounts: Mapping[str, str] = field(
        default_factory=lambda: {DEMO_PUBLIC_KEY: DEMO_PRIVATE_KEY}
    )

    def __post_init__(self) -> None:
        _check_range("latency_ms", self.latency_ms, 0.0, None)
        _check_range("fault_rate", self.fault_rate, 0.0, 1.0)
        _check_range("drift", self.drift, 0.0, 1.0)
        if self.rate_limit is not None and not self.rate_limit > 0:
            raise ValueError(
                f"rate_limit must be a positive number of requests per second "
                f"or None, not {self.rate_limit!r}"
            )
        if self.rate_limit_mode not in ("retcode", "http"):
            raise ValueError(
                f"rate_limit_mode must be 'retcode' or 'http', "
                f"not {self.rate_limit_mode!r}"
            )
        if self.rate_limit_burst is not None and not self.rate_limit_burst >= 1:
            raise ValueError(
                f"rate_limit_burst must be at least 1, not {self.rate_limit_burst!r}"
            )
        if self.limit_cap is not None and self.limit_cap < 1:
            raise ValueError(f"limit_cap must be at least 1, not {self.limit_cap!r}")
        object.__setattr__(self, "faults", _check_faults(self.faults))
        # A read-only copy, so the options stay frozen in fact as well as in name.
        object.__setattr__(self, "accounts", MappingProxyType(dict(self.accounts)))

    @property
    def burst(self) -> float:
        """Capacity of the rate limiter's token bucket."""
        if self.rate_limit_burst is not None:
            return self.rate_limit_burst
        return max(1.0, (self.rate_limit or 0.0) / 10)


def _check_range(name: str, value: float, low: float, high: float | None) -> None:
    if not value >= low or (high is not None and not value <= high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bounds}, not {value!r}")


def _check_faults(faults: Iterable[str]) -> tuple[str, ...]:
    kinds = tuple(faults)
    unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
    if unknown or not kinds:
        raise ValueError(
            f"faults must be a non-empty list of {', '.join(FAULT_KINDS)}; "
            f"got {', '.join(map(repr, unknown or kinds)) or 'nothing'}"
        )
    return kinds


# ---------------------------------------------------------------- registry


@dataclass(frozen=True, slots=True)
class _Tag:
    """One tag. ``row`` is its TagSet entry, serialized once for every page."""

    name: str
    digest: str | None
    update_time: str | int
    row: orjson.Fragment


# A tag as (name, digest, update time): all the truth views need of it.
_TagFields = tuple[str, str | None, str | int]


def _make_tag(name: str, digest: str | None, update_time: str | int) -> _Tag:
    entry: dict[str, object] = {"TagName": name, "UpdateTime": update_time}
    if digest is not None:
        entry["Digest"] = digest
    return _Tag(name, digest, update_time, orjson.Fragment(orjson.dumps(entry)))


def _format_time(epoch_s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def _digest(rng: random.Random) -> str:
    return "sha256:" + format(rng.getrandbits(256), "064x")


def _draw_tag_name(rng: random.Random, moment: int) -> str:
    """One tag name in one of the styles real registries are full of."""
    roll = rng.random()
    if roll < 0.3:
        return f"v{rng.randint(0, 4)}.{rng.randint(0, 24)}.{rng.randint(0, 40)}"
    if roll < 0.6:
        return f"sha-{rng.getrandbits(28):07x}"
    if roll < 0.8:
        day = time.strftime("%Y.%m.%d", time.gmtime(moment))
        return f"{day}-build.{rng.randint(1, 40)}"
    if roll < 0.9:
        return f"rc-{rng.randint(0, 4)}.{rng.randint(0, 24)}.{rng.randint(0, 9)}"
    return rng.choice(("latest", "main", "stable", "dev"))


def _fresh_tag_name(rng: random.Random, taken: set[str], moment: int) -> str:
    """Draw tag names until one is not in ``taken``, and claim it."""
    while True:
        name = _draw_tag_name(rng, moment)
        if name not in taken:
            taken.add(name)
            return name


def _generate_tags(
    seed_key: str,
    count: int,
    newest_s: int,
    int_times: bool,
    names: Sequence[str] | None,
) -> Iterator[_TagFields]:
    """Yield an image's initial tags, newest first.

    Everything is drawn from a Random seeded by the image's own key, so an image
    gets the same tags whether it is generated first, last or twice.
    """
    rng = random.Random(seed_key)
    taken: set[str] = set()
    step_max_s = max(60, _HISTORY_S // max(count, 1))
    moment = newest_s
    for index in range(count):
        name = _fresh_tag_name(rng, taken, moment) if names is None else names[index]
        digest = None if rng.random() < _NO_DIGEST_RATE else _digest(rng)
        yield name, digest, moment if int_times else _format_time(moment)
        moment -= rng.randint(1, step_max_s)


class _Image:
    """An image, its tags, and the history the truth views need.

    Tags are generated on first use, so a registry of a million tags costs
    little until a client pages through it. ``_tags`` is the current list,
    newest first; drift edits it in place and records every tag it pushes
    (``_added``) and every name it deletes (``_removed``). Tag names are never
    reused, so ``_taken`` holds every name the image has ever had.
    """

    __slots__ = (
        "_added",
        "_head",
        "_initial",
        "_initial_count",
        "_names",
        "_newest_s",
        "_removed",
        "_seed_key",
        "_tags",
        "_taken",
        "create_s",
        "int_times",
        "name",
        "project_id",
        "pull_count",
        "repo_name",
    )

    def __init__(
        self,
        ids: tuple[str, str, str],
        seed_key: str,
        count: int,
        newest_s: int,
        *,
        int_times: bool = False,
        pull_count: int = 0,
        names: Sequence[str] | None = None,
    ) -> None:
        self.project_id, self.repo_name, self.name = ids
        self.pull_count = pull_count
        self.create_s = newest_s - _HISTORY_S
        self.int_times = int_times
        self._seed_key = seed_key
        self._initial_count = count
        self._newest_s = newest_s
        self._names = names
        self._head: str | None = None
        self._tags: list[_Tag] | None = None
        self._initial: tuple[_Tag, ...] = ()
        self._taken: set[str] = set()
        self._added: list[_Tag] = []
        self._removed: set[str] = set()

    def _generate(self) -> Iterator[_TagFields]:
        return _generate_tags(
            self._seed_key,
            self._initial_count,
            self._newest_s,
            self.int_times,
            self._names,
        )

    def tags(self) -> list[_Tag]:
        """The current tags, newest first, generated on the first call."""
        if self._tags is None:
            self._initial = tuple(_make_tag(*fields) for fields in self._generate())
            self._tags = list(self._initial)
            self._taken = {tag.name for tag in self._initial}
        return self._tags

    @property
    def tag_count(self) -> int:
        if self._tags is None:
            return self._initial_count
        return len(self._tags)

    def latest_tag(self) -> str:
        """Name of the head tag, without generating the whole list."""
        if self._tags is not None:
            return self._tags[0].name if self._tags else ""
        if self._head is None:
            self._head = next((name for name, _, _ in self._generate()), "")
        return self._head

    def time_value(self, epoch_s: int) -> str | int:
        return epoch_s if self.int_times else _format_time(epoch_s)

    def row(self) -> dict[str, object]:
        """This image's ImageSet entry; it changes with drift, so it is not kept."""
        return {
            "RepoName": self.repo_name,
            "ImageName": self.name,
            "LatestTag": self.latest_tag(),
            "PullCount": self.pull_count,
            "CreateTime": self.time_value(self.create_s),
            "UpdateTime": self.time_value(self._newest_s),
        }

    def truth(self, view: str) -> list[_TagFields]:
        """The tags of a truth view, sorted by name."""
        if self._tags is None:
            # Never served, never drifted: every view is the initial list, and
            # generating it without keeping it keeps big registries small.
            return sorted(self._generate())
        if view == "current":
            tags: Iterable[_Tag] = self._tags
        elif view == "stable":
            tags = (tag for tag in self._initial if tag.name not in self._removed)
        else:
            tags = (*self._initial, *self._added)
        # Names are unique within an image, so the sort never compares the rest.
        return sorted((tag.name, tag.digest, tag.update_time) for tag in tags)

    def push(self, rng: random.Random) -> _Tag:
        """Push a new tag at the head, with a name the image never had."""
        tags = self.tags()
        self._newest_s += rng.randint(1, 3_600)
        name = _fresh_tag_name(rng, self._taken, self._newest_s)
        tag = _make_tag(name, _digest(rng), self.time_value(self._newest_s))
        tags.insert(0, tag)
        self._added.append(tag)
        return tag

    def delete(self, rng: random.Random) -> _Tag:
        """Delete a random tag; the tags behind it shift towards the head."""
        tags = self.tags()
        tag = tags.pop(rng.randrange(len(tags)))
        self._removed.add(tag.name)
        return tag


@dataclass(frozen=True, slots=True)
class _Repo:
    """A repository; ``row`` is its RepoSet entry, serialized once."""

    name: str
    kind: str
    row: orjson.Fragment
    images: Mapping[str, _Image]
    image_list: tuple[_Image, ...]


def _make_repo(
    name: str, kind: str, images: Sequence[_Image], rng: random.Random
) -> _Repo:
    if kind not in REPO_TYPES:
        raise ValueError(
            f"repository {name!r} has type {kind!r}; use 'private' or 'public'"
        )
    update_s = _BASE_EPOCH - rng.randint(0, 300 * _DAY_S)
    entry = {
        "RepoName": name,
        "Description": f"{name.replace('-', ' ')} images",
        "CreateTime": _format_time(update_s - rng.randint(30, 900) * _DAY_S),
        "UpdateTime": _format_time(update_s),
        "IsShared": rng.random() < 0.2,
        "IsOutSide": kind == "public" and rng.random() < 0.3,
    }
    by_name = {image.name: image for image in images}
    if len(by_name) != len(images):
        raise ValueError(f"repository {name!r} lists an image name twice")
    return _Repo(
        name, kind, orjson.Fragment(orjson.dumps(entry)), by_name, tuple(images)
    )


@dataclass(frozen=True, slots=True)
class _Project:
    project_id: str
    repos: Mapping[str, _Repo]
    by_kind: Mapping[str, tuple[_Repo, ...]]


def _make_project(project_id: str, repos: Sequence[_Repo]) -> _Project:
    by_name = {repo.name: repo for repo in repos}
    if len(by_name) != len(repos):
        raise ValueError(f"project {project_id!r} lists a repository name twice")
    by_kind = {
        kind: tuple(repo for repo in repos if repo.kind == kind) for kind in REPO_TYPES
    }
    return _Project(project_id, by_name, by_kind)


_REPO_STEMS = (
    "platform", "payments", "search", "identity", "billing", "data", "ml",
    "infra", "web", "mobile", "analytics", "auth", "checkout", "catalog",
    "edge", "ops", "ledger", "notify",
)  # fmt: skip
_REPO_SUFFIXES = ("", "-api", "-service", "-jobs", "-tools", "-models")
_IMAGE_STEMS = (
    "api", "worker", "frontend", "backend", "nginx", "redis-cache", "postgres",
    "migrator", "scheduler", "gateway", "trainer", "inference", "exporter",
    "agent", "proxy", "builder", "runner", "ingest", "notifier", "cron",
)  # fmt: skip
_IMAGE_SUFFIXES = ("", "", "-slim", "-debug", "-gpu", "-arm64")


def _unique_name(
    rng: random.Random, used: set[str], stems: Sequence[str], suffixes: Sequence[str]
) -> str:
    """A plausible name not yet in ``used``, numbered once the words run out."""
    name = rng.choice(stems) + rng.choice(suffixes)
    for _ in range(8):
        if name not in used:
            break
        name = rng.choice(stems) + rng.choice(suffixes)
    base, number = name, 2
    while name in used:
        name, number = f"{base}-{number}", number + 1
    used.add(name)
    return name


def _plan_tag_counts(rng: random.Random, total_tags: int) -> list[int]:
    """Tag counts per image, skewed like real registries, summing to the total.

    A few images hold thousands of tags, most hold tens and some none. One
    image is always a big one, so every registry has a long listing to page.
    """
    big_cap = max(1, min(20_000, total_tags // 4))
    counts = [min(total_tags, big_cap, 1_000 + rng.randint(0, 2_000))]
    remaining = total_tags - counts[0]
    while remaining > 0:
        roll = rng.random()
        if roll < 0.06:
            count = 0
        elif roll < 0.08:
            count = min(big_cap, int(rng.paretovariate(1.3) * 1_000))
        else:
            count = max(1, int(rng.lognormvariate(3.0, 0.9)))
        count = min(count, remaining)
        counts.append(count)
        remaining -= count
    return counts


def _synthetic_project(
    rng: random.Random, seed: int, project_id: str, counts: list[int]
) -> _Project:
    # Every project shows an image without tags and a repository without
    # images, and has repositories of both types.
    counts = [*counts, 0]
    rng.shuffle(counts)
    groups: list[list[int]] = []
    while counts:
        size = rng.randint(1, 8)
        groups.append(counts[:size])
        del counts[:size]
    groups.insert(1, [])
    used: set[str] = set()
    repos = []
    for index, group in enumerate(groups):
        kind = REPO_TYPES[index] if index < 2 else rng.choice(REPO_TYPES)
        name = _unique_name(rng, used, _REPO_STEMS, _REPO_SUFFIXES)
        images = _synthetic_images(rng, seed, (project_id, name), group)
        repos.append(_make_repo(name, kind, images, rng))
    return _make_project(project_id, repos)


def _synthetic_images(
    rng: random.Random, seed: int, repo_ids: tuple[str, str], counts: Sequence[int]
) -> list[_Image]:
    used: set[str] = set()
    images = []
    for count in counts:
        name = _unique_name(rng, used, _IMAGE_STEMS, _IMAGE_SUFFIXES)
        ids = (*repo_ids, name)
        image = _Image(
            ids,
            f"{seed}:" + ":".join(ids),
            count,
            _BASE_EPOCH - rng.randint(0, 400 * _DAY_S),
            int_times=rng.random() < _INT_TIME_RATE,
            pull_count=rng.randint(0, 9) * 10 ** rng.randint(0, 5),
        )
        images.append(image)
    return images


def _synthetic_projects(seed: int, total_tags: int) -> list[_Project]:
    rng = random.Random(f"registry:{seed}")
    counts = _plan_tag_counts(rng, total_tags)
    split = max(1, round(len(counts) * 0.7))
    return [
        _synthetic_project(rng, seed, DEFAULT_PROJECT_ID, counts[:split]),
        _synthetic_project(rng, seed, SECOND_PROJECT_ID, counts[split:]),
    ]


def _layout_image(
    ids: tuple[str, str, str], seed: int, tags: Sequence[str] | int
) -> _Image:
    seed_key = f"{seed}:" + ":".join(ids)
    if isinstance(tags, int):
        return _Image(ids, seed_key, tags, _BASE_EPOCH)
    names = tuple(tags)
    if len(set(names)) != len(names):
        raise ValueError(f"image {ids[2]!r} lists a tag name twice: {names!r}")
    return _Image(ids, seed_key, len(names), _BASE_EPOCH, names=names)


def _layout_projects(layout: Mapping[str, Any], seed: int) -> list[_Project]:
    rng = random.Random(f"layout:{seed}")
    projects = []
    for project_id, repos in layout.items():
        built = []
        for repo_name, spec in repos.items():
            images = [
                _layout_image((project_id, repo_name, image_name), seed, tags)
                for image_name, tags in spec.get("images", {}).items()
            ]
            kind = spec.get("type", "public")
            built.append(_make_repo(repo_name, kind, images, rng))
        projects.append(_make_project(project_id, built))
    return projects


class SimRegistry:
    """A synthetic registry: projects, repositories, images and tags.

    ``SimRegistry(seed, total_tags)`` builds a realistic registry with about
    ``total_tags`` tags in the projects ``org-default`` (the default one) and
    ``org-ml``; the same seed always builds the same registry. Use
    :meth:`from_layout` to spell a registry out instead.
    """

    def __init__(self, seed: int = 0, total_tags: int = 12_000) -> None:
        if total_tags < 0:
            raise ValueError(f"total_tags must be >= 0, not {total_tags!r}")
        self._setup(seed, _synthetic_projects(seed, total_tags), DEFAULT_PROJECT_ID)

    @classmethod
    def from_layout(
        cls,
        layout: Mapping[str, Mapping[str, Mapping[str, Any]]],
        default_project: str | None = None,
        *,
        seed: int = 0,
    ) -> SimRegistry:
        """Build a registry from nested mappings.

        ``layout`` maps project id -> repository name -> ``{"type": "private"
        or "public", "images": {image name: [tag name, ...] or a tag count}}``.
        Listed tags are served in the given order (the first is the newest);
        counted tags are generated. ``default_project`` defaults to the first
        project.
        """
        registry = cls.__new__(cls)
        projects = _layout_projects(layout, seed)
        if default_project is None:
            if not projects:
                raise ValueError("layout must hold at least one project")
            default_project = projects[0].project_id
        registry._setup(seed, projects, default_project)
        return registry

    def _setup(self, seed: int, projects: list[_Project], default: str) -> None:
        self.seed = seed
        self._projects = {project.project_id: project for project in projects}
        if default not in self._projects:
            raise ValueError(
                f"default project {default!r} is not one of {list(self._projects)}"
            )
        self.default_project = default

    @property
    def project_ids(self) -> list[str]:
        return list(self._projects)

    def _project(self, project_id: str) -> _Project | None:
        return self._projects.get(project_id or self.default_project)

    def _images(self) -> Iterator[_Image]:
        for project in self._projects.values():
            for repo in project.repos.values():
                yield from repo.image_list

    def truth_rows(self, view: str = "current") -> list[dict[str, object]]:
        """Every tag row of ``view``, sorted by project, repo, image and tag.

        ``current`` is the registry now; ``stable`` the rows that existed from
        the start and were never touched by drift; ``ever`` every row that
        existed at any moment.
        """
        return list(self.iter_truth_rows(view))

    def iter_truth_rows(self, view: str = "current") -> Iterator[dict[str, object]]:
        """The rows of :meth:`truth_rows`, one at a time, in the same order."""
        if view not in TRUTH_VIEWS:
            raise ValueError(f"view must be one of {TRUTH_VIEWS}, not {view!r}")
        for project_id in sorted(self._projects):
            repos = self._projects[project_id].repos
            for repo_name in sorted(repos):
                images = repos[repo_name].images
                for image_name in sorted(images):
                    for tag_name, digest, update_time in images[image_name].truth(view):
                        yield {
                            "project_id": project_id,
                            "repo_name": repo_name,
                            "image_name": image_name,
                            "tag_name": tag_name,
                            "digest": digest,
                            "update_time": update_time,
                        }

    def counts(self) -> dict[str, int]:
        """How many projects, repositories, images and current tags there are."""
        images = list(self._images())
        return {
            "projects": len(self._projects),
            "repos": sum(len(p.repos) for p in self._projects.values()),
            "images": len(images),
            "tags": sum(image.tag_count for image in images),
        }


# ---------------------------------------------------------------- stats


@dataclass(slots=True, eq=False)
class SimStats:
    """What the simulator did since it started or was last reset.

    ``requests`` counts API calls by Action ("" when it was missing);
    ``ret_codes`` and ``http_statuses`` count the answers sent, ``faults``
    the faults injected by kind and ``drift`` the drift events ("push" or
    "delete"). Throttled requests count in ``requests`` and ``throttled``.
    """

    requests: Counter[str] = field(default_factory=Counter)
    ret_codes: Counter[int] = field(default_factory=Counter)
    http_statuses: Counter[int] = field(default_factory=Counter)
    throttled: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    drift: Counter[str] = field(default_factory=Counter)

    def reset(self) -> None:
        for counter in (
            self.requests,
            self.ret_codes,
            self.http_statuses,
            self.faults,
            self.drift,
        ):
            counter.clear()
        self.throttled = 0

    def as_dict(self) -> dict[str, object]:
        """The stats as JSON-ready data; numeric keys become strings."""
        return {
            "requests": dict(self.requests),
            "ret_codes": {str(code): n for code, n in self.ret_codes.items()},
            "http_statuses": {str(code): n for code, n in self.http_statuses.items()},
            "throttled": self.throttled,
            "faults": dict(self.faults),
            "drift": dict(self.drift),
        }


class _TokenBucket:
    """Admits ``rate_per_s`` requests a second on average, ``capacity`` at once."""

    __slots__ = ("_capacity", "_rate_per_s", "_tokens", "_updated_s")

    def __init__(self, rate_per_s: float, capacity: float, now_s: float) -> None:
        self._rate_per_s = rate_per_s
        self._capacity = capacity
        self._tokens = capacity
        self._updated_s = now_s

    def try_take(self, now_s: float) -> bool:
        elapsed_s = max(0.0, now_s - self._updated_s)
        self._tokens = min(self._capacity, self._tokens + elapsed_s * self._rate_per_s)
        self._updated_s = now_s
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


# ---------------------------------------------------------------- requests


class _ApiError(Exception):
    """A request the API refuses, with the RetCode and Message to answer."""

    def __init__(self, ret_code: int, message: str) -> None:
        super().__init__(message)
        self.ret_code = ret_code
        self.message = message


class _State:
    """Everything one simulator app shares between its requests."""

    def __init__(
        self,
        registry: SimRegistry,
        options: SimOptions,
        clock: Callable[[], float] | None,
    ) -> None:
        self.registry = registry
        self.options = options
        self.stats = SimStats()
        self.rng = random.Random(options.seed)
        self.clock = clock or time.monotonic
        self.bucket: _TokenBucket | None = None
        if options.rate_limit is not None:
            self.bucket = _TokenBucket(options.rate_limit, options.burst, self.clock())
        # Set when the app shuts down, to release requests hung by a fault.
        self.closing = asyncio.Event()

    def pick_fault(self) -> str | None:
        if self.options.fault_rate and self.rng.random() < self.options.fault_rate:
            return self.rng.choice(self.options.faults)
        return None

    def maybe_drift(self, image: _Image) -> None:
        if not (self.options.drift and self.rng.random() < self.options.drift):
            return
        if image.tag_count == 0 or self.rng.random() < 0.5:
            image.push(self.rng)
            self.stats.drift["push"] += 1
        else:
            image.delete(self.rng)
            self.stats.drift["delete"] += 1

    def reply(
        self,
        payload: dict[str, object],
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        """A JSON answer, counted in the stats."""
        self.stats.ret_codes[payload["RetCode"]] += 1  # type: ignore[index]
        self.stats.http_statuses[status] += 1
        return web.Response(
            body=orjson.dumps(payload),
            status=status,
            headers=headers,
            content_type="application/json",
        )


_STATE = web.AppKey("sim_state", _State)


def _failure(action: str, ret_code: int, message: str) -> dict[str, object]:
    return {"RetCode": ret_code, "Action": action + "Response", "Message": message}


def _json_params(body: bytes) -> dict[str, object]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _ApiError(_RET_INVALID_PARAM, "request body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise _ApiError(_RET_INVALID_PARAM, "request body must be a JSON object")
    for name, value in data.items():
        if not isinstance(value, str | int | float):
            raise _ApiError(
                _RET_INVALID_PARAM,
                f"parameter {name!r} must be a string, number or boolean, "
                f"not {value!r}",
            )
    return data


async def _read_params(request: web.Request) -> dict[str, object]:
    """All parameters received: the query string, then a POST body on top."""
    params: dict[str, object] = dict(request.query)
    if request.method != "POST":
        return params
    if request.content_type == "application/json":
        params.update(_json_params(await request.read()))
    elif request.content_type == "application/x-www-form-urlencoded":
        form = await request.post()
        params.update((k, v) for k, v in form.items() if isinstance(v, str))
    else:
        raise _ApiError(
            _RET_INVALID_PARAM,
            f"Content-Type {request.content_type!r} is not supported; send "
            "application/x-www-form-urlencoded or application/json",
        )
    return params


def _text(params: Mapping[str, object], name: str) -> str:
    """A parameter as text, as it was signed; "" when absent."""
    value = params.get(name)
    return "" if value is None else format_value(value)


def _required(params: Mapping[str, object], name: str) -> str:
    value = _text(params, name)
    if not value:
        raise _ApiError(_RET_MISSING_PARAM, f"missing parameter {name}")
    return value


def _count(params: Mapping[str, object], name: str, default: int, low: int) -> int:
    """A non-negative integer parameter, given as text or as a JSON number."""
    value = params.get(name, default)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        number: object = int(value)
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        number = value
    if isinstance(number, bool) or not isinstance(number, int) or number < low:
        raise _ApiError(
            _RET_INVALID_PARAM,
            f"{name} must be an integer >= {low}, not {value!r}",
        )
    return number


def _page(state: _State, params: Mapping[str, object]) -> slice:
    offset = _count(params, "Offset", 0, 0)
    limit = _count(params, "Limit", _DEFAULT_LIMIT, 1)
    if state.options.limit_cap is not None:
        limit = min(limit, state.options.limit_cap)
    return slice(offset, offset + limit)


def _authenticate(params: Mapping[str, object], accounts: Mapping[str, str]) -> None:
    if not _text(params, "Action"):
        raise _ApiError(_RET_NO_ACTION, "missing parameter Action")
    signature = _text(params, "Signature")
    if not signature:
        raise _ApiError(_RET_NO_SIGNATURE, "missing parameter Signature")
    public_key = _text(params, "PublicKey")
    private_key = accounts.get(public_key)
    if private_key is None:
        raise _ApiError(_RET_UNKNOWN_KEY, f"unknown PublicKey {public_key!r}")
    if not hmac.compare_digest(signature, sign(params, private_key)):
        raise _ApiError(
            _RET_BAD_SIGNATURE,
            "Signature does not match the parameters; sign every parameter "
            "but Signature with the private key of PublicKey",
        )


def _project(state: _State, params: Mapping[str, object]) -> _Project:
    project_id = _text(params, "ProjectId")
    project = state.registry._project(project_id)
    if project is None:
        raise _ApiError(_RET_NO_PROJECT, f"project {project_id!r} not found")
    return project


def _repo(state: _State, params: Mapping[str, object]) -> _Repo:
    project = _project(state, params)
    name = _required(params, "RepoName")
    repo = project.repos.get(name)
    if repo is None:
        raise _ApiError(_RET_NOT_FOUND, f"repository {name!r} not found")
    return repo


def _get_repo(state: _State, params: Mapping[str, object]) -> dict[str, object]:
    project = _project(state, params)
    kind = _text(params, "Type") or "public"
    if kind not in REPO_TYPES:
        raise _ApiError(
            _RET_INVALID_PARAM, f"Type must be 'private' or 'public', not {kind!r}"
        )
    repos = project.by_kind[kind]
    page = repos[_page(state, params)]
    return {"TotalCount": len(repos), "RepoSet": [repo.row for repo in page]}


def _get_repo_image(state: _State, params: Mapping[str, object]) -> dict[str, object]:
    images = _repo(state, params).image_list
    page = images[_page(state, params)]
    return {"TotalCount": len(images), "ImageSet": [image.row() for image in page]}


def _get_image_tag(state: _State, params: Mapping[str, object]) -> dict[str, object]:
    repo = _repo(state, params)
    name = _required(params, "ImageName")
    image = repo.images.get(name)
    if image is None:
        raise _ApiError(_RET_NOT_FOUND, f"image {name!r} not found in {repo.name!r}")
    page = _page(state, params)
    state.maybe_drift(image)
    tags = image.tags()
    tag_name = _text(params, "TagName")
    if tag_name:
        tags = [tag for tag in tags if tag.name == tag_name]
    return {"TotalCount": len(tags), "TagSet": [tag.row for tag in tags[page]]}


_ACTIONS: Mapping[str, Callable[[_State, Mapping[str, object]], dict[str, object]]] = {
    "GetRepo": _get_repo,
    "GetRepoImage": _get_repo_image,
    "GetImageTag": _get_image_tag,
}


def _dispatch(state: _State, params: Mapping[str, object]) -> dict[str, object]:
    action = _text(params, "Action")
    try:
        _authenticate(params, state.options.accounts)
        handler = _ACTIONS.get(action)
        if handler is None:
            raise _ApiError(
                _RET_UNKNOWN_ACTION,
                f"unknown Action {action!r}; use one of {', '.join(_ACTIONS)}",
            )
        payload = handler(state, params)
    except _ApiError as error:
        return _failure(action, error.ret_code, error.message)
    return {"RetCode": _RET_OK, "Action": action + "Response", **payload}


# ---------------------------------------------------------------- faults


def _html(state: _State, status: int, title: str) -> web.Response:
    state.stats.http_statuses[status] += 1
    page = f"<html><head><title>{title}</title></head><body><h1>{title}</h1>"
    return web.Response(
        text=page + "</body></html>", status=status, content_type="text/html"
    )


def _throttled(state: _State, action: str, mode: str, retry_after: str) -> web.Response:
    payload = _failure(action, _RET_RATE_LIMITED, "rate limited")
    if mode == "retcode":
        return state.reply(payload)
    return state.reply(payload, 429, {"Retry-After": retry_after})


def _past_http_date() -> str:
    moment = datetime.now(UTC) - timedelta(seconds=30)
    return email.utils.format_datetime(moment, usegmt=True)


async def _broken_body(
    request: web.Request, state: _State, action: str, *, reset: bool
) -> web.StreamResponse:
    """Start a JSON answer, then break the connection.

    ``reset`` sends half the body and resets the connection (RST);
    otherwise the whole body goes out under a Content-Length promising more,
    and the connection is closed normally.
    """
    body = orjson.dumps(
        {"RetCode": _RET_OK, "Action": action + "Response", "TotalCount": 0}
    )
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(body) + (0 if reset else 64)
    state.stats.http_statuses[200] += 1
    await response.prepare(request)
    await response.write(body[: len(body) // 2] if reset else body)
    transport = request.transport
    if transport is not None:
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0 makes close() send RST instead of FIN.
                linger = struct.pack("ii", 1, 0)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            transport.abort()
        else:
            transport.close()
    # aiohttp notices the dead connection when it finishes the response.
    return response


async def _hang(request: web.Request, state: _State) -> web.StreamResponse:
    """Never answer: wait until the client leaves or the server shuts down."""
    await state.closing.wait()
    if request.transport is not None:
        request.transport.abort()
    return web.Response()


async def _inject_fault(
    kind: str, request: web.Request, state: _State, action: str
) -> web.StreamResponse:
    state.stats.faults[kind] += 1
    if kind in ("reset", "short_body"):
        return await _broken_body(request, state, action, reset=kind == "reset")
    if kind == "hang":
        return await _hang(request, state)
    if kind == "html_200":
        return _html(state, 200, "Internal Server Error")
    if kind in _GATEWAY_TITLES:
        return _html(state, int(kind[-3:]), _GATEWAY_TITLES[kind])
    if kind == "retcode_150":
        message = "service busy, try again later"
        return state.reply(_failure(action, _RET_BUSY, message))
    if kind == "retcode_153":
        return _throttled(state, action, "retcode", "")
    retry_after = "1" if kind == "http_429" else _past_http_date()
    return _throttled(state, action, "http", retry_after)


_GATEWAY_TITLES = {
    "http_502": "502 Bad Gateway",
    "http_503": "503 Service Unavailable",
    "http_504": "504 Gateway Timeout",
}


# ---------------------------------------------------------------- app


async def _handle_api(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    try:
        params = await _read_params(request)
    except _ApiError as error:
        state.stats.requests[""] += 1
        return state.reply(_failure("", error.ret_code, error.message))
    action = _text(params, "Action")
    state.stats.requests[action] += 1
    # The limiter sees the request as it arrives, before any added latency.
    if state.bucket is not None and not state.bucket.try_take(state.clock()):
        state.stats.throttled += 1
        return _throttled(state, action, state.options.rate_limit_mode, "1")
    if state.options.latency_ms:
        jitter = state.rng.uniform(0.5, 1.5)
        await asyncio.sleep(state.options.latency_ms * jitter / 1000)
    fault = state.pick_fault()
    if fault is not None:
        return await _inject_fault(fault, request, state, action)
    return state.reply(_dispatch(state, params))


async def _handle_truth(request: web.Request) -> web.StreamResponse:
    view = request.query.get("view", "current")
    if view not in TRUTH_VIEWS:
        message = f"view must be one of {', '.join(TRUTH_VIEWS)}, not {view!r}"
        return web.json_response({"error": message}, status=400)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    # Streamed in chunks: a million-tag truth need not sit in memory as JSON.
    chunk: list[bytes] = []
    for row in request.app[_STATE].registry.iter_truth_rows(view):
        chunk.append(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
        if len(chunk) == 5_000:
            await response.write(b"".join(chunk))
            chunk.clear()
    await response.write(b"".join(chunk))
    await response.write_eof()
    return response


async def _handle_stats(request: web.Request) -> web.Response:
    stats = request.app[_STATE].stats.as_dict()
    return web.Response(body=orjson.dumps(stats), content_type="application/json")


async def _handle_reset_stats(request: web.Request) -> web.Response:
    stats = request.app[_STATE].stats
    stats.reset()
    return web.Response(
        body=orjson.dumps(stats.as_dict()), content_type="application/json"
    )


async def _release_hung(app: web.Application) -> None:
    app[_STATE].closing.set()


def create_app(
    registry: SimRegistry,
    options: SimOptions | None = None,
    *,
    clock: Callable[[], float] | None = None,
) -> web.Application:
    """The simulator as an aiohttp application.

    ``clock`` (monotonic seconds) feeds the rate limiter; tests pass a fake one.
    """
    app = web.Application()
    app[_STATE] = _State(registry, options or SimOptions(), clock)
    app.router.add_get("/", _handle_api)
    app.router.add_post("/", _handle_api)
    app.router.add_get("/_sim/truth", _handle_truth)
    app.router.add_get("/_sim/stats", _handle_stats)
    app.router.add_post("/_sim/reset-stats", _handle_reset_stats)
    app.on_shutdown.append(_release_hung)
    return app


class SimServer:
    """Run the simulator on a socket for the length of an ``async with``.

    Port 0 picks a free port; ``url`` tells which. Leaving the block stops the
    server, releasing requests hung by the ``hang`` fault.
    """

    def __init__(
        self,
        registry: SimRegistry,
        options: SimOptions | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.registry = registry
        self.options = options or SimOptions()
        self.app = create_app(registry, self.options, clock=clock)
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.url = ""

    @property
    def stats(self) -> SimStats:
        return self.app[_STATE].stats

    async def __aenter__(self) -> SimServer:
        # handler_cancellation ends a hung request as soon as its client leaves.
        runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=5
        )
        await runner.setup()
        self._runner = runner
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await self.aclose()
            raise
        host, port = runner.addresses[0][:2]
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


async def serve(
    registry: SimRegistry,
    options: SimOptions,
    host: str = "127.0.0.1",
    port: int = 8080,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the simulator until cancelled; the ``crawler simulate`` loop.

    ``announce`` gets one line once the server listens: its URL, size and
    the (simulated, not secret) account keys a client needs."""
    async with SimServer(registry, options, host=host, port=port) as sim:
        counts = registry.counts()
        public_key, private_key = next(iter(options.accounts.items()), ("", ""))
        if announce is not None:
            announce(
                f"registry simulator on {sim.url}: {counts['projects']} projects, "
                f"{counts['repos']} repositories, {counts['images']} images, "
                f"{counts['tags']} tags; public key {public_key!r}, "
                f"private key {private_key!r}"
            )
        await asyncio.Event().wait()


# ---------------------------------------------------------------- command line


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 1")
    return value


def _non_negative(kind: Callable[[str], float]) -> Callable[[str], Any]:
    def parse(text: str) -> float:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} is negative")
        return value

    parse.__name__ = kind.__name__
    return parse


def _positive(kind: Callable[[str], float]) -> Callable[[str], Any]:
    def parse(text: str) -> float:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not positive")
        return value

    parse.__name__ = kind.__name__
    return parse


def _fault_list(text: str) -> tuple[str, ...]:
    kinds = tuple(kind.strip() for kind in text.split(",") if kind.strip())
    unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of fault kinds; "
            f"choose from {','.join(FAULT_KINDS)}"
        )
    return kinds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options to a command-line parser."""
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    add("--port", type=int, default=8080, help="port to bind (default: %(default)s)")
    add("--seed", type=int, default=0, help="seed of the registry and the faults")
    add("--tags", type=_non_negative(int), default=12_000, help="total tags")
    add("--latency-ms", type=_non_negative(float), default=0.0, help="mean latency")
    add("--rate-limit", type=_positive(float), default=None, help="requests/s")
    add("--rate-limit-mode", choices=("retcode", "http"), default="retcode")
    add("--fault-rate", type=_fraction, default=0.0, help="share of faulty answers")
    add(
        "--faults",
        type=_fault_list,
        default=DEFAULT_FAULTS,
        help=f"comma-separated fault kinds, from {','.join(FAULT_KINDS)}",
    )
    add("--limit-cap", type=_positive(int), default=None, help="max rows per page")
    add("--drift", type=_fraction, default=0.0, help="chance a tag page drifts")
    add("--public-key", default=DEMO_PUBLIC_KEY, help="account public key")
    add("--private-key", default=DEMO_PRIVATE_KEY, help="account private key")


def options_from_args(
    args: argparse.Namespace,
) -> tuple[SimRegistry, SimOptions, str, int]:
    """The registry, options, host and port that parsed arguments ask for."""
    options = SimOptions(
        latency_ms=args.latency_ms,
        rate_limit=args.rate_limit,
        rate_limit_mode=args.rate_limit_mode,
        fault_rate=args.fault_rate,
        faults=args.faults,
        limit_cap=args.limit_cap,
        drift=args.drift,
        seed=args.seed,
        accounts={args.public_key: args.private_key},
    )
    registry = SimRegistry(seed=args.seed, total_tags=args.tags)
    return registry, options, args.host, args.port
