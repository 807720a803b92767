"""Tests of the registry simulator, over a real loopback socket."""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import re
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
import yarl

from crawler._signing import sign
from crawler._simulator import (
    DEFAULT_FAULTS,
    DEMO_PRIVATE_KEY,
    DEMO_PUBLIC_KEY,
    FAULT_KINDS,
    SimOptions,
    SimRegistry,
    SimServer,
    add_arguments,
    options_from_args,
)

AWKWARD_REPO = "team+core&x=y"
AWKWARD_IMAGE = "img name/ü"
AWKWARD_TAGS = ["v1+build", "a&b=c", "sp ace", "ünï-😀", "%2B", "plain"]

LAYOUT: dict[str, Any] = {
    "acme": {
        "web": {
            "type": "public",
            "images": {"api": ["v3", "v2", "v1"], "empty": [], "counted": 5},
        },
        "vault": {"type": "private", "images": {"secrets": ["latest"]}},
        "hollow": {"type": "public", "images": {}},
        AWKWARD_REPO: {"type": "public", "images": {AWKWARD_IMAGE: AWKWARD_TAGS}},
    },
    "other": {
        "big": {"type": "private", "images": {"many": 5_000}},
    },
}


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def signed(
    params: Mapping[str, object], private_key: str = DEMO_PRIVATE_KEY
) -> dict[str, Any]:
    full = {"PublicKey": DEMO_PUBLIC_KEY, **params}
    full["Signature"] = sign(full, private_key)
    return full


@asynccontextmanager
async def running(
    registry: SimRegistry | None = None, **options: Any
) -> AsyncIterator[tuple[SimServer, aiohttp.ClientSession]]:
    clock = options.pop("clock", None)
    sim = SimServer(
        registry or SimRegistry.from_layout(LAYOUT), SimOptions(**options), clock=clock
    )
    async with sim, aiohttp.ClientSession() as session:
        yield sim, session


async def call(
    session: aiohttp.ClientSession,
    sim: SimServer,
    params: Mapping[str, object],
    how: str = "get",
) -> tuple[int, dict[str, Any]]:
    """Send raw params one of three ways; return HTTP status and JSON body."""
    if how == "get":
        query = urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
        request = session.get(yarl.URL(f"{sim.url}/?{query}", encoded=True))
    elif how == "form":
        request = session.post(sim.url + "/", data=dict(params))
    else:
        request = session.post(sim.url + "/", json=dict(params))
    async with request as response:
        return response.status, orjson.loads(await response.read())


def truth_of(registry: SimRegistry, image: str, view: str = "current") -> set[str]:
    return {
        str(row["tag_name"])
        for row in registry.truth_rows(view)
        if row["image_name"] == image
    }


# ---------------------------------------------------------------- protocol


@pytest.mark.parametrize(
    ("params", "ret_code", "action"),
    [
        ({"PublicKey": DEMO_PUBLIC_KEY}, 160, "Response"),
        ({"Action": "GetRepo", "PublicKey": DEMO_PUBLIC_KEY}, 170, "GetRepoResponse"),
        ({"Action": "GetRepo", "Signature": "x"}, 172, "GetRepoResponse"),
        (
            {"Action": "GetRepo", "PublicKey": "nobody", "Signature": "x"},
            172,
            "GetRepoResponse",
        ),
        (
            {"Action": "GetRepo", "PublicKey": DEMO_PUBLIC_KEY, "Signature": "0" * 40},
            171,
            "GetRepoResponse",
        ),
        (signed({"Action": "GetRepo"}, "wrong-key"), 171, "GetRepoResponse"),
        (signed({"Action": "DeleteRepo"}), 161, "DeleteRepoResponse"),
    ],
)
async def test_signature_checks_in_order(
    params: dict[str, object], ret_code: int, action: str
) -> None:
    async with running() as (sim, session):
        status, body = await call(session, sim, params)
    assert status == 200
    assert body["RetCode"] == ret_code
    assert body["Action"] == action
    assert body["Message"]
    assert sim.stats.ret_codes == {ret_code: 1}


async def test_get_form_and_json_are_signed_alike() -> None:
    text_params = signed(
        {"Action": "GetImageTag", "RepoName": "web", "ImageName": "api", "Limit": "2"}
    )
    # JSON numbers are signed as they are written: 2 signs as "2".
    json_params = signed(
        {"Action": "GetImageTag", "RepoName": "web", "ImageName": "api", "Limit": 2}
    )
    async with running() as (sim, session):
        answers = [
            await call(session, sim, text_params, "get"),
            await call(session, sim, text_params, "form"),
            await call(session, sim, json_params, "json"),
        ]
    for status, body in answers:
        assert status == 200
        assert body["RetCode"] == 0
        assert body["Action"] == "GetImageTagResponse"
        assert body["TotalCount"] == 3
        assert [row["TagName"] for row in body["TagSet"]] == ["v3", "v2"]
    assert sim.stats.requests == {"GetImageTag": 3}


async def test_json_body_must_be_an_object_of_scalars() -> None:
    async with running() as (sim, session):
        async with session.post(
            sim.url + "/", data=b"[1]", headers={"Content-Type": "application/json"}
        ) as response:
            not_object = orjson.loads(await response.read())
        _, nested = await call(session, sim, {"Action": "GetRepo", "X": [1]}, "json")
    assert not_object["RetCode"] == 231
    assert not_object["Action"] == "Response"
    assert nested["RetCode"] == 231


@pytest.mark.parametrize("how", ["get", "form", "json"])
async def test_awkward_names_round_trip(how: str) -> None:
    registry = SimRegistry.from_layout(LAYOUT)
    base = {"Action": "GetImageTag", "RepoName": AWKWARD_REPO}
    async with running(registry) as (sim, session):
        _, listing = await call(
            session, sim, signed({**base, "ImageName": AWKWARD_IMAGE}), how
        )
        _, images = await call(
            session,
            sim,
            signed({"Action": "GetRepoImage", "RepoName": AWKWARD_REPO}),
            how,
        )
        _, one = await call(
            session,
            sim,
            signed({**base, "ImageName": AWKWARD_IMAGE, "TagName": "a&b=c"}),
            how,
        )
    assert listing["RetCode"] == 0
    assert [row["TagName"] for row in listing["TagSet"]] == AWKWARD_TAGS
    assert images["ImageSet"][0]["RepoName"] == AWKWARD_REPO
    assert images["ImageSet"][0]["ImageName"] == AWKWARD_IMAGE
    assert images["ImageSet"][0]["LatestTag"] == "v1+build"
    assert [row["TagName"] for row in one["TagSet"]] == ["a&b=c"]
    assert truth_of(registry, AWKWARD_IMAGE) == set(AWKWARD_TAGS)


async def test_get_repo_lists_by_type() -> None:
    async with running() as (sim, session):
        _, public = await call(session, sim, signed({"Action": "GetRepo"}))
        _, private = await call(
            session,
            sim,
            signed({"Action": "GetRepo", "Type": "private", "ProjectId": ""}),
        )
        _, other = await call(
            session,
            sim,
            signed({"Action": "GetRepo", "ProjectId": "other", "Type": "private"}),
        )
        _, bad = await call(session, sim, signed({"Action": "GetRepo", "Type": "all"}))
    assert public["TotalCount"] == 3
    assert [row["RepoName"] for row in public["RepoSet"]] == [
        "web",
        "hollow",
        AWKWARD_REPO,
    ]
    assert set(public["RepoSet"][0]) == {
        "RepoName", "Description", "CreateTime", "UpdateTime", "IsShared", "IsOutSide"
    }  # fmt: skip
    assert isinstance(public["RepoSet"][0]["IsShared"], bool)
    assert [row["RepoName"] for row in private["RepoSet"]] == ["vault"]
    assert [row["RepoName"] for row in other["RepoSet"]] == ["big"]
    assert bad["RetCode"] == 231


async def test_get_repo_image_rows() -> None:
    async with running() as (sim, session):
        _, body = await call(
            session, sim, signed({"Action": "GetRepoImage", "RepoName": "web"})
        )
        _, hollow = await call(
            session, sim, signed({"Action": "GetRepoImage", "RepoName": "hollow"})
        )
    assert body["TotalCount"] == 3
    assert [(row["ImageName"], row["LatestTag"]) for row in body["ImageSet"]] == [
        ("api", "v3"),
        ("empty", ""),
        ("counted", body["ImageSet"][2]["LatestTag"]),
    ]
    assert set(body["ImageSet"][0]) == {
        "RepoName", "ImageName", "LatestTag", "PullCount", "CreateTime", "UpdateTime"
    }  # fmt: skip
    assert hollow == {
        "RetCode": 0, "Action": "GetRepoImageResponse", "TotalCount": 0, "ImageSet": []
    }  # fmt: skip


@pytest.mark.parametrize(
    ("params", "ret_code"),
    [
        ({"Action": "GetRepo", "ProjectId": "nope"}, 292),
        ({"Action": "GetRepoImage"}, 230),
        ({"Action": "GetRepoImage", "RepoName": ""}, 230),
        ({"Action": "GetRepoImage", "RepoName": "missing"}, 240),
        ({"Action": "GetImageTag", "RepoName": "web"}, 230),
        ({"Action": "GetImageTag", "RepoName": "web", "ImageName": "nope"}, 240),
        ({"Action": "GetImageTag", "RepoName": "vault", "ImageName": "api"}, 240),
        ({"Action": "GetRepo", "Offset": "-1"}, 231),
        ({"Action": "GetRepo", "Offset": "one"}, 231),
        ({"Action": "GetRepo", "Limit": "0"}, 231),
        ({"Action": "GetRepo", "Limit": "2.5"}, 231),
        ({"Action": "GetRepo", "Limit": True}, 231),
        ({"Action": "GetRepo", "Limit": 2.0}, 0),
    ],
)
async def test_parameter_errors(params: dict[str, object], ret_code: int) -> None:
    async with running() as (sim, session):
        _, body = await call(session, sim, signed(params), "json")
    assert body["RetCode"] == ret_code
    if ret_code == 292:
        assert body["Message"] == "project 'nope' not found"


async def test_pages_are_slices_of_the_tag_list() -> None:
    registry = SimRegistry.from_layout(LAYOUT)
    expected = [
        tag.name
        for tag in registry._projects["other"].repos["big"].images["many"].tags()
    ]
    base = {"Action": "GetImageTag", "ProjectId": "other", "RepoName": "big"}
    seen: list[str] = []
    async with running(registry) as (sim, session):
        for offset in range(0, 5_000, 1_000):
            params = {**base, "ImageName": "many", "Offset": offset, "Limit": 1_000}
            _, body = await call(session, sim, signed(params), "json")
            assert body["TotalCount"] == 5_000
            seen.extend(row["TagName"] for row in body["TagSet"])
        _, past_end = await call(
            session, sim, signed({**base, "ImageName": "many", "Offset": "5000"})
        )
    assert seen == expected
    assert len(set(seen)) == 5_000
    assert past_end["TotalCount"] == 5_000
    assert past_end["TagSet"] == []


async def test_tag_name_filter() -> None:
    base = {"Action": "GetImageTag", "RepoName": "web", "ImageName": "api"}
    async with running() as (sim, session):
        _, hit = await call(session, sim, signed({**base, "TagName": "v2"}))
        _, miss = await call(session, sim, signed({**base, "TagName": "v9"}))
    assert hit["TotalCount"] == 1
    assert [row["TagName"] for row in hit["TagSet"]] == ["v2"]
    assert miss["TotalCount"] == 0
    assert miss["TagSet"] == []


async def test_crawl_of_synthetic_registry_equals_truth() -> None:
    registry = SimRegistry(seed=3, total_tags=600)
    rows: list[tuple[str, ...]] = []
    async with running(registry) as (sim, session):
        for project in ("", "org-ml"):
            for kind in ("private", "public"):
                for repo in await _all(
                    sim, session, "GetRepo", "RepoSet", ProjectId=project, Type=kind
                ):
                    rows += await _crawl_repo(sim, session, project, repo["RepoName"])
    project_ids = {"": "org-default", "org-ml": "org-ml"}
    crawled = sorted((project_ids[p], *rest) for p, *rest in rows)
    truth = [tuple(row.values()) for row in registry.truth_rows()]
    assert crawled == truth
    assert len(truth) == 600


async def _all(
    sim: SimServer,
    session: aiohttp.ClientSession,
    action: str,
    key: str,
    **params: object,
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        request = signed(
            {"Action": action, "Offset": len(found), "Limit": 37, **params}
        )
        _, body = await call(session, sim, request, "json")
        assert body["RetCode"] == 0, body
        found += body[key]
        if len(found) >= body["TotalCount"]:
            return found


async def _crawl_repo(
    sim: SimServer, session: aiohttp.ClientSession, project: str, repo: str
) -> list[tuple[Any, ...]]:
    rows = []
    for image in await _all(
        sim, session, "GetRepoImage", "ImageSet", ProjectId=project, RepoName=repo
    ):
        name = image["ImageName"]
        tags = await _all(
            sim,
            session,
            "GetImageTag",
            "TagSet",
            ProjectId=project,
            RepoName=repo,
            ImageName=name,
        )
        if tags:
            assert image["LatestTag"] == tags[0]["TagName"]
        rows += [
            (project, repo, name, tag["TagName"], tag.get("Digest"), tag["UpdateTime"])
            for tag in tags
        ]
    return rows


async def test_odd_rows_pass_through() -> None:
    registry = SimRegistry(seed=0)
    rows = registry.truth_rows()
    int_time = next(r for r in rows if isinstance(r["update_time"], int))
    no_digest = next(r for r in rows if r["digest"] is None)
    async with running(registry) as (sim, session):
        served = [
            (await call(session, sim, signed(_tag_query(row))))[1]["TagSet"]
            for row in (int_time, no_digest)
        ]
    assert served[0][0]["UpdateTime"] == int_time["update_time"]
    assert served[0][0]["TagName"] == int_time["tag_name"]
    assert served[1] == [
        {"TagName": no_digest["tag_name"], "UpdateTime": no_digest["update_time"]}
    ]


def _tag_query(row: Mapping[str, object]) -> dict[str, object]:
    return {
        "Action": "GetImageTag",
        "ProjectId": row["project_id"],
        "RepoName": row["repo_name"],
        "ImageName": row["image_name"],
        "TagName": row["tag_name"],
    }


# ---------------------------------------------------------------- switches


async def test_limit_cap_serves_fewer_rows() -> None:
    params = {"Action": "GetImageTag", "ProjectId": "other", "RepoName": "big"}
    async with running(limit_cap=7) as (sim, session):
        _, body = await call(
            session, sim, signed({**params, "ImageName": "many", "Limit": 100})
        )
    assert body["TotalCount"] == 5_000
    assert len(body["TagSet"]) == 7


@pytest.mark.parametrize(
    ("mode", "status", "retry_after"), [("retcode", 200, None), ("http", 429, "1")]
)
async def test_rate_limit(mode: str, status: int, retry_after: str | None) -> None:
    clock = FakeClock()
    params = signed({"Action": "GetRepo"})
    options: dict[str, Any] = {"rate_limit": 2.0, "rate_limit_mode": mode}
    options["clock"] = clock
    async with running(**options) as (sim, session):
        first = await call(session, sim, params)
        async with session.get(sim.url + "/", params=params) as response:
            second = response.status, response.headers.get("Retry-After")
            second_body = orjson.loads(await response.read())
        third = await call(session, sim, params)
        clock.now_s += 0.5  # half a second earns one token at 2 requests/s
        fourth = await call(session, sim, params)
    # The default burst is one request, so the second one is already refused.
    assert (first[0], first[1]["RetCode"]) == (200, 0)
    assert second == (status, retry_after)
    assert second_body == {
        "RetCode": 153, "Action": "GetRepoResponse", "Message": "rate limited"
    }  # fmt: skip
    assert (third[0], third[1]["RetCode"]) == (status, 153)
    assert fourth[1]["RetCode"] == 0
    assert sim.stats.throttled == 2
    assert sim.stats.requests == {"GetRepo": 4}
    assert sim.stats.ret_codes == {0: 2, 153: 2}
    assert sim.stats.http_statuses == Counter({200: 2}) + Counter({status: 2})


async def test_rate_limit_burst() -> None:
    clock = FakeClock()
    params = signed({"Action": "GetRepo"})
    async with running(rate_limit=1.0, rate_limit_burst=3, clock=clock) as (
        sim,
        session,
    ):
        codes = [(await call(session, sim, params))[1]["RetCode"] for _ in range(4)]
    assert codes == [0, 0, 0, 153]


async def _faulted(kind: str) -> tuple[SimServer, Any]:
    params = signed({"Action": "GetImageTag", "RepoName": "web", "ImageName": "api"})
    async with running(fault_rate=1.0, faults=(kind,)) as (sim, session):
        try:
            timeout = aiohttp.ClientTimeout(total=0.3)
            async with session.get(
                sim.url + "/", params=params, timeout=timeout
            ) as response:
                body = await response.read()
                outcome: Any = (
                    response.status,
                    response.content_type,
                    response.headers,
                    body,
                )
        except (TimeoutError, aiohttp.ClientError) as error:
            outcome = error
    return sim, outcome


@pytest.mark.parametrize(
    ("kind", "status", "content_type", "ret_code"),
    [
        ("html_200", 200, "text/html", None),
        ("http_502", 502, "text/html", None),
        ("http_503", 503, "text/html", None),
        ("http_504", 504, "text/html", None),
        ("retcode_150", 200, "application/json", 150),
        ("retcode_153", 200, "application/json", 153),
        ("http_429", 429, "application/json", 153),
        ("http_429_date", 429, "application/json", 153),
    ],
)
async def test_answered_faults(
    kind: str, status: int, content_type: str, ret_code: int | None
) -> None:
    sim, (got_status, got_type, headers, body) = await _faulted(kind)
    assert (got_status, got_type) == (status, content_type)
    if ret_code is not None:
        assert orjson.loads(body)["RetCode"] == ret_code
    if kind == "http_429":
        assert headers["Retry-After"] == "1"
    if kind == "http_429_date":
        moment = email.utils.parsedate_to_datetime(headers["Retry-After"])
        assert moment < datetime.now(UTC)
    assert sim.stats.faults == {kind: 1}
    assert sim.stats.http_statuses == {status: 1}


@pytest.mark.parametrize("kind", ["reset", "short_body"])
async def test_broken_connections(kind: str) -> None:
    sim, outcome = await _faulted(kind)
    assert isinstance(outcome, aiohttp.ClientError)
    if kind == "short_body":
        assert isinstance(outcome, aiohttp.ClientPayloadError)
    assert sim.stats.faults == {kind: 1}


async def test_hang_times_out_and_shuts_down() -> None:
    started = time.monotonic()
    sim, outcome = await _faulted("hang")
    assert isinstance(outcome, asyncio.TimeoutError)
    assert sim.stats.faults == {"hang": 1}
    assert time.monotonic() - started < 3


async def test_hang_is_released_at_shutdown() -> None:
    params = signed({"Action": "GetRepo"})
    async with aiohttp.ClientSession() as session:
        async with SimServer(
            SimRegistry.from_layout(LAYOUT), SimOptions(fault_rate=1, faults=("hang",))
        ) as sim:
            pending = asyncio.create_task(call(session, sim, params))
            while not sim.stats.faults:
                await asyncio.sleep(0.005)
        with pytest.raises(aiohttp.ClientError):
            await pending


async def test_faults_are_reproducible_from_the_seed() -> None:
    params = signed({"Action": "GetRepo"})

    async def statuses() -> list[int]:
        async with running(fault_rate=0.5, faults=("http_502", "http_503"), seed=9) as (
            sim,
            session,
        ):
            found = []
            for _ in range(12):
                async with session.get(sim.url + "/", params=params) as response:
                    await response.read()
                    found.append(response.status)
            return found

    first = await statuses()
    assert first == await statuses()
    assert {200, 502, 503} <= set(first)


async def test_latency_is_added() -> None:
    params = signed({"Action": "GetRepo"})
    async with running(latency_ms=20) as (sim, session):
        started = time.monotonic()
        await call(session, sim, params)
        elapsed_s = time.monotonic() - started
    assert elapsed_s >= 0.01  # jitter never goes below half the mean


async def test_drift_updates_truth_views() -> None:
    registry = SimRegistry.from_layout(LAYOUT)
    initial = truth_of(registry, "api")
    params = signed({"Action": "GetImageTag", "RepoName": "web", "ImageName": "api"})
    async with running(registry, drift=1.0, seed=4) as (sim, session):
        for _ in range(12):
            _, body = await call(session, sim, params)
        served = [row["TagName"] for row in body["TagSet"]]
    drift = sim.stats.drift
    assert drift["push"] + drift["delete"] == 12
    current = truth_of(registry, "api")
    stable = truth_of(registry, "api", "stable")
    ever = truth_of(registry, "api", "ever")
    assert set(served) == current
    assert len(current) == 3 + drift["push"] - drift["delete"]
    assert len(ever) == 3 + drift["push"]
    assert stable == initial & current
    assert current <= ever and initial <= ever
    # Other images never drift.
    assert truth_of(registry, "secrets", "ever") == {"latest"}


async def test_drift_pushes_at_the_head() -> None:
    registry = SimRegistry.from_layout(
        {"p": {"r": {"type": "public", "images": {"i": []}}}}
    )
    params = signed({"Action": "GetImageTag", "RepoName": "r", "ImageName": "i"})
    async with running(registry, drift=1.0) as (sim, session):
        _, body = await call(session, sim, params)
    # An empty image can only grow.
    assert sim.stats.drift == {"push": 1}
    assert body["TotalCount"] == 1
    assert registry.truth_rows("stable") == []
    assert registry.truth_rows("ever") == registry.truth_rows("current")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", body["TagSet"][0]["Digest"])


# ---------------------------------------------------------------- introspection


async def test_introspection_routes() -> None:
    registry = SimRegistry.from_layout(LAYOUT)
    async with running(registry) as (sim, session):
        await call(session, sim, signed({"Action": "GetRepo"}))
        async with session.get(sim.url + "/_sim/truth?view=ever") as response:
            lines = (await response.read()).splitlines()
        async with session.get(sim.url + "/_sim/stats") as response:
            stats = orjson.loads(await response.read())
        async with session.post(sim.url + "/_sim/reset-stats") as response:
            assert response.status == 200
        async with session.get(sim.url + "/_sim/truth?view=bogus") as response:
            assert response.status == 400
    assert [orjson.loads(line) for line in lines] == registry.truth_rows("ever")
    assert stats == {
        "requests": {"GetRepo": 1},
        "ret_codes": {"0": 1},
        "http_statuses": {"200": 1},
        "throttled": 0,
        "faults": {},
        "drift": {},
    }
    assert sim.stats.requests == {}


# ---------------------------------------------------------------- registry


def test_synthetic_registry_shape() -> None:
    registry = SimRegistry(seed=5)
    rows = registry.truth_rows()
    assert registry.counts()["tags"] == len(rows) == 12_000
    assert registry.project_ids == ["org-default", "org-ml"]
    assert registry.default_project == "org-default"
    assert rows == sorted(rows, key=lambda r: tuple(map(str, list(r.values())[:4])))
    assert list(rows[0]) == [
        "project_id", "repo_name", "image_name", "tag_name", "digest", "update_time"
    ]  # fmt: skip
    missing = sum(1 for row in rows if row["digest"] is None)
    assert 0.01 < missing / len(rows) < 0.05
    assert all(
        re.fullmatch(r"sha256:[0-9a-f]{64}", str(row["digest"]))
        for row in rows
        if row["digest"]
    )
    for project in registry._projects.values():
        assert {repo.kind for repo in project.repos.values()} == {"private", "public"}
        assert any(not repo.image_list for repo in project.repos.values())
        assert any(
            image.tag_count == 0
            for repo in project.repos.values()
            for image in repo.image_list
        )
    sizes = sorted((i.tag_count for i in registry._images()), reverse=True)
    assert sizes[0] >= 1_000
    assert SimRegistry(seed=5).truth_rows() == rows


def test_million_tag_registry_builds_fast() -> None:
    started = time.monotonic()
    registry = SimRegistry(seed=1, total_tags=1_000_000)
    assert time.monotonic() - started < 3
    assert registry.counts()["tags"] == 1_000_000


def test_layout_validation() -> None:
    with pytest.raises(ValueError, match="tag name twice"):
        SimRegistry.from_layout({"p": {"r": {"images": {"i": ["a", "a"]}}}})
    with pytest.raises(ValueError, match="'shared'"):
        SimRegistry.from_layout({"p": {"r": {"type": "shared", "images": {}}}})
    with pytest.raises(ValueError, match="default project 'q'"):
        SimRegistry.from_layout({"p": {}}, default_project="q")


# ---------------------------------------------------------------- options


def test_options_validation() -> None:
    assert "hang" not in DEFAULT_FAULTS
    assert set(DEFAULT_FAULTS) | {"hang"} == set(FAULT_KINDS)
    assert SimOptions(rate_limit=50).burst == 5
    assert SimOptions(rate_limit=5).burst == 1
    with pytest.raises(ValueError, match="'boom'"):
        SimOptions(faults=("reset", "boom"))
    with pytest.raises(ValueError, match="fault_rate"):
        SimOptions(fault_rate=1.5)
    with pytest.raises(ValueError, match="rate_limit_mode"):
        SimOptions(rate_limit_mode="drop")  # type: ignore[arg-type]


def test_command_line_arguments() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--tags", "300", "--faults", "reset,hang", "--fault-rate", "0.1",
         "--rate-limit", "40", "--rate-limit-mode", "http", "--public-key", "pk",
         "--private-key", "sk", "--port", "0", "--seed", "2", "--limit-cap", "50"]
    )  # fmt: skip
    registry, options, host, port = options_from_args(args)
    assert (host, port) == ("127.0.0.1", 0)
    assert registry.counts()["tags"] == 300
    assert options.faults == ("reset", "hang")
    assert dict(options.accounts) == {"pk": "sk"}
    assert (options.rate_limit, options.rate_limit_mode) == (40.0, "http")
    assert (options.seed, options.limit_cap, options.fault_rate) == (2, 50, 0.1)


def test_bad_fault_list_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--faults", "reset,explode"])
    assert "'reset,explode' is not a comma-separated list of fault kinds" in (
        capsys.readouterr().err
    )
