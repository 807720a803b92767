"""Whole crawls of the simulator over loopback, compared row by row with its
ground truth, through the library API and through the JSON Lines export."""

from __future__ import annotations

import gc
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import (
    DEAD_ENDPOINT,
    LAYOUT_REPO_TYPES,
    NOT_THE_API_PAGE,
    ROW_KEYS,
    HtmlServer,
    StartSim,
    make_config,
    read_jsonl,
    row_key,
    sort_rows,
)

from crawler import (
    AuthError,
    ConfigError,
    CrawlerError,
    EndpointError,
    OutputConfig,
    OutputError,
    Stats,
    Tag,
    TagCrawler,
)
from crawler._cli import EXIT_OK, EXIT_PARTIAL, export
from crawler._client import ApiClient
from crawler._export import JsonlExport
from crawler._models import ImageRef
from crawler._simulator import SimRegistry

METHODS = ["get", "form", "json"]
BOTH_PROJECTS = ("org-default", "org-ml")


async def crawl_rows(config: Any) -> tuple[list[dict[str, Any]], TagCrawler]:
    async with TagCrawler(config) as crawler:
        rows = [tag.to_dict() async for tag in crawler.tags()]
    return rows, crawler


def only(rows: list[dict[str, Any]], **match: object) -> list[dict[str, Any]]:
    return [row for row in rows if all(row[k] == v for k, v in match.items())]


@pytest.fixture(scope="module")
def synthetic() -> SimRegistry:
    """A realistic registry; crawls without drift leave it as it is."""
    return SimRegistry(seed=11, total_tags=3_000)


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("method", METHODS)
async def test_crawl_of_both_projects_equals_the_truth(
    start_sim: StartSim, synthetic: SimRegistry, method: str
) -> None:
    sim = await start_sim(synthetic)
    config = make_config(sim.url, method=method, projects=BOTH_PROJECTS)
    rows, crawler = await crawl_rows(config)

    truth = synthetic.truth_rows("current")
    assert len(truth) == 3_000
    assert len(rows) == len(truth)  # no row twice
    assert sort_rows(rows) == truth
    # The truth holds the awkward cases, so the comparison covers them.
    assert {row["project_id"] for row in truth} == set(BOTH_PROJECTS)
    assert any(row["digest"] is None for row in truth)
    assert any(isinstance(row["update_time"], int) for row in truth)

    counts = synthetic.counts()
    stats = crawler.stats
    assert (stats.repos, stats.images, stats.tags) == (
        counts["repos"],
        counts["images"],
        3_000,
    )
    assert stats.requests == sum(sim.stats.requests.values())
    assert (stats.retries, stats.failures, stats.repasses) == (0, 0, 0)
    assert crawler.failures == []
    assert sim.stats.ret_codes == {0: stats.requests}


async def test_every_project_and_repository_type_is_exported(
    start_sim: StartSim, synthetic: SimRegistry
) -> None:
    sim = await start_sim(synthetic)
    config = make_config(sim.url, projects=BOTH_PROJECTS)
    rows, _ = await crawl_rows(config)
    exported = {(row["project_id"], row["repo_name"]) for row in rows}

    # Ask the API itself which repositories are of which type.
    async with ApiClient(config.api, config.crawl) as client:
        for project_id in BOTH_PROJECTS:
            for repo_type in ("private", "public"):
                params = {
                    "ProjectId": project_id,
                    "Type": repo_type,
                    "Offset": 0,
                    "Limit": 1_000,
                }
                doc = await client.call("GetRepo", params, expect="RepoSet")
                repos = {(project_id, row["RepoName"]) for row in doc["RepoSet"]}
                assert repos & exported, (project_id, repo_type)


@pytest.mark.parametrize("method", METHODS)
async def test_awkward_names_survive_every_method(
    start_sim: StartSim, layout_registry: SimRegistry, method: str
) -> None:
    sim = await start_sim(layout_registry)
    config = make_config(sim.url, method=method, projects=("acme", "other"))
    rows, crawler = await crawl_rows(config)
    assert sort_rows(rows) == layout_registry.truth_rows("current")
    awkward = only(rows, repo_name="team+core&x=y")
    assert sorted(row["tag_name"] for row in awkward) == sorted(
        ["v1+build", "a&b=c", "sp ace", "ünï-😀", "%2B"]
    )
    assert {row["image_name"] for row in awkward} == {"img name/ü"}
    assert crawler.failures == []


@pytest.mark.parametrize("repo_type", ["private", "public"])
async def test_one_repository_type(
    start_sim: StartSim, layout_registry: SimRegistry, repo_type: str
) -> None:
    sim = await start_sim(layout_registry)
    config = make_config(sim.url, projects=("acme", "other"), repo_types=(repo_type,))
    rows, _ = await crawl_rows(config)
    truth = [
        row
        for row in layout_registry.truth_rows("current")
        if LAYOUT_REPO_TYPES[(row["project_id"], row["repo_name"])] == repo_type
    ]
    assert truth  # both types hold tags in LAYOUT
    assert sort_rows(rows) == truth
    assert sim.stats.requests["GetRepo"] == 2  # one listing per project


async def test_configured_repositories_are_not_listed(
    start_sim: StartSim, layout_registry: SimRegistry
) -> None:
    sim = await start_sim(layout_registry)
    config = make_config(sim.url, projects=("acme",), repos=("web", "vault"))
    rows, _ = await crawl_rows(config)
    truth = layout_registry.truth_rows("current")
    acme = only(truth, project_id="acme")
    assert sort_rows(rows) == [
        row for row in acme if row["repo_name"] in ("web", "vault")
    ]
    assert "GetRepo" not in sim.stats.requests
    assert sim.stats.requests["GetRepoImage"] == 2


async def test_configured_images_are_read_directly(
    start_sim: StartSim, layout_registry: SimRegistry
) -> None:
    sim = await start_sim(layout_registry)
    config = make_config(
        sim.url,
        projects=("acme", "other"),
        images=(("web", "three"), ("site", "nginx")),
    )
    rows, crawler = await crawl_rows(config)
    # Each image is asked for in each project; the one that lacks it fails.
    assert sort_rows(rows) == [
        row
        for row in layout_registry.truth_rows("current")
        if (row["project_id"], row["repo_name"], row["image_name"])
        in (("acme", "web", "three"), ("other", "site", "nginx"))
    ]
    assert dict(sim.stats.requests) == {"GetImageTag": 4}
    assert sorted(
        (f["params"]["ProjectId"], f["params"]["RepoName"], f["ret_code"])
        for f in crawler.failures
    ) == [("acme", "site", 240), ("other", "web", 240)]


async def test_the_default_project_has_no_project_id(
    start_sim: StartSim, layout_registry: SimRegistry
) -> None:
    sim = await start_sim(layout_registry)
    rows, _ = await crawl_rows(make_config(sim.url))  # no projects configured
    acme = only(layout_registry.truth_rows("current"), project_id="acme")
    assert sort_rows(rows) == [{**row, "project_id": None} for row in acme]


async def test_a_consumer_may_stop_early(
    start_sim: StartSim, layout_registry: SimRegistry
) -> None:
    sim = await start_sim(layout_registry)
    config = make_config(sim.url, projects=("acme", "other"), page_size=10)
    truth = {tuple(row.values()) for row in layout_registry.truth_rows("current")}
    async with TagCrawler(config) as crawler:
        taken = []
        async for tag in crawler.tags():
            taken.append(tag)
            if len(taken) == 25:
                break
    assert len(taken) == 25
    assert all(tuple(tag.to_dict().values()) in truth for tag in taken)


# ---------------------------------------------------------------- failures


async def test_an_unknown_project_fails_alone(
    start_sim: StartSim, layout_registry: SimRegistry
) -> None:
    sim = await start_sim(layout_registry)
    rows, crawler = await crawl_rows(make_config(sim.url, projects=("nope", "other")))
    assert sort_rows(rows) == only(
        layout_registry.truth_rows("current"), project_id="other"
    )
    (failure,) = crawler.failures  # one line for the project, not one per type
    repo_type = failure["params"]["Type"]
    assert repo_type in ("private", "public")
    assert failure == {
        "action": "GetRepo",
        "params": {"ProjectId": "nope", "Type": repo_type, "Offset": 0, "Limit": 100},
        "ret_code": 292,
        "http_status": None,
        "message": "project 'nope' not found",
        "attempts": 1,
    }
    assert crawler.stats.failures == 1


async def test_an_unknown_repository_fails_alone(
    start_sim: StartSim, layout_registry: SimRegistry
) -> None:
    sim = await start_sim(layout_registry)
    config = make_config(sim.url, projects=("acme",), repos=("ghost", "vault"))
    rows, crawler = await crawl_rows(config)
    assert sort_rows(rows) == only(
        layout_registry.truth_rows("current"), project_id="acme", repo_name="vault"
    )
    assert crawler.failures == [
        {
            "action": "GetRepoImage",
            "params": {
                "ProjectId": "acme",
                "RepoName": "ghost",
                "Offset": 0,
                "Limit": 100,
            },
            "ret_code": 240,
            "http_status": None,
            "message": "repository 'ghost' not found",
            "attempts": 1,
        }
    ]


async def test_a_wrong_private_key_stops_the_crawl(
    start_sim: StartSim, layout_registry: SimRegistry
) -> None:
    sim = await start_sim(layout_registry)
    config = make_config(
        sim.url, projects=("acme", "other"), private_key="not-the-private-key"
    )
    taken: list[Tag] = []
    async with TagCrawler(config) as crawler:
        with pytest.raises(AuthError) as info:
            async for tag in crawler.tags():
                taken.append(tag)
    assert taken == []
    assert info.value.ret_code == 171
    assert str(info.value) == (
        "GetRepo: RetCode 171: Signature does not match the parameters; sign "
        "every parameter but Signature with the private key of PublicKey "
        "(the private key does not fit the public key: check api.private_key "
        "or CRAWLER_PRIVATE_KEY)"
    )
    # Only the first listings went out, each refused once, none retried.
    refused = sim.stats.ret_codes[171]
    assert sim.stats.ret_codes == {171: refused}
    assert 1 <= refused <= 4
    assert crawler.stats.retries == 0


async def test_an_unknown_public_key_stops_the_crawl(
    start_sim: StartSim, layout_registry: SimRegistry
) -> None:
    sim = await start_sim(layout_registry)
    config = make_config(sim.url, projects=("acme",), public_key="nobody")
    async with TagCrawler(config) as crawler:
        with pytest.raises(AuthError) as info:
            await crawler.image_tags("web", "three", project_id="acme")
    assert info.value.ret_code == 172
    assert str(info.value) == (
        "GetImageTag: RetCode 172: unknown PublicKey 'nobody' (the public key "
        "is unknown: check api.public_key or CRAWLER_PUBLIC_KEY)"
    )
    assert dict(sim.stats.requests) == {"GetImageTag": 1}


async def test_nothing_listening_is_an_endpoint_error() -> None:
    config = make_config(DEAD_ENDPOINT, projects=("acme",), repos=("web",))
    async with TagCrawler(config) as crawler:
        with pytest.raises(EndpointError) as info:
            async for _ in crawler.tags():
                pass
    message = str(info.value)
    assert message.startswith(f"GetRepoImage: cannot connect to {DEAD_ENDPOINT}: ")
    assert message.endswith("; check api.endpoint, CRAWLER_ENDPOINT or --endpoint")
    assert "\n" not in message
    assert crawler.stats.requests == 3  # a wrong endpoint fails fast


async def test_a_web_server_that_is_not_the_api_is_an_endpoint_error(
    html_server: HtmlServer,
) -> None:
    config = make_config(
        html_server.url, projects=("acme",), repos=("web",), max_retries=20
    )
    async with TagCrawler(config) as crawler:
        with pytest.raises(EndpointError) as info:
            async for _ in crawler.tags():
                pass
    assert info.value.http_status is None
    assert str(info.value) == (
        f"GetRepoImage: cannot use {html_server.url}: answer is not an API "
        f"response: {NOT_THE_API_PAGE.decode()!r}; check api.endpoint, "
        "CRAWLER_ENDPOINT or --endpoint"
    )
    # 8 answers that are not the API's, not the 21 tries a call may have.
    assert crawler.stats.requests == 8
    assert html_server.requests == 8


async def test_answered_faults_are_retried_to_an_exact_export(
    start_sim: StartSim,
) -> None:
    registry = SimRegistry(seed=4, total_tags=1_500)
    faults = (
        "http_502",
        "http_503",
        "http_504",
        "retcode_150",
        "html_200",
        "short_body",
        "reset",
        "retcode_153",
        "http_429_date",  # a past date: the normal (zero) backoff applies
    )
    sim = await start_sim(registry, fault_rate=0.25, faults=faults, seed=9)
    config = make_config(sim.url, projects=BOTH_PROJECTS, page_size=20)
    rows, crawler = await crawl_rows(config)
    assert sort_rows(rows) == registry.truth_rows("current")
    assert crawler.failures == []
    injected = sim.stats.faults
    assert sum(injected.values()) > 20  # the run really met faults
    # Each fault costs exactly one retry; throttling answers are counted
    # apart, as throttled and not as retries.
    throttled = injected["retcode_153"] + injected["http_429_date"]
    assert throttled > 0
    assert crawler.stats.retries == sum(injected.values()) - throttled
    assert crawler.stats.throttled == throttled
    assert crawler.stats.requests == sum(sim.stats.requests.values())


# ---------------------------------------------------------------- image_tags


async def test_image_tags(start_sim: StartSim, layout_registry: SimRegistry) -> None:
    sim = await start_sim(layout_registry)
    async with TagCrawler(make_config(sim.url)) as crawler:
        default = await crawler.image_tags("web", "three")
        other = await crawler.image_tags("models", "trainer", project_id="other")
        one = await crawler.image_tags("web", "three", project_id="acme", tag_name="b")
        none = await crawler.image_tags("web", "three", tag_name="zzz")
        empty = await crawler.image_tags("web", "empty")
    truth = layout_registry.truth_rows("current")
    assert sorted(tag.tag_name for tag in default) == ["a", "b", "c"]
    assert {tag.project_id for tag in default} == {None}
    assert sorted((t.to_dict() for t in other), key=lambda r: r["tag_name"]) == only(
        truth, project_id="other", image_name="trainer"
    )
    (b_row,) = only(truth, image_name="three", tag_name="b")
    digest, update_time = b_row["digest"], b_row["update_time"]
    assert one == [Tag("acme", "web", "three", "b", digest, update_time)]
    assert none == []
    assert empty == []
    assert crawler.stats.tags == 3 + 250 + 1


# ---------------------------------------------------------------- the export


def output_in(tmp_path: Path) -> OutputConfig:
    return OutputConfig(
        path=str(tmp_path / "tags.jsonl"), errors=str(tmp_path / "errors.jsonl")
    )


@pytest.mark.parametrize("method", METHODS)
async def test_export_file_equals_the_truth(
    start_sim: StartSim, synthetic: SimRegistry, tmp_path: Path, method: str
) -> None:
    sim = await start_sim(synthetic)
    output = output_in(tmp_path)
    config = make_config(sim.url, method=method, projects=BOTH_PROJECTS, output=output)
    stats = Stats()
    assert await export(config, resume=False, stats=stats) == EXIT_OK

    lines = Path(output.path).read_bytes().splitlines()
    assert all(list(orjson.loads(line)) == ROW_KEYS for line in lines)
    rows = [orjson.loads(line) for line in lines]
    assert len(rows) == 3_000
    assert sort_rows(rows) == synthetic.truth_rows("current")
    assert stats.tags == 3_000
    # The part file was renamed into place; a clean run leaves no checkpoint.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["errors.jsonl", "tags.jsonl"]
    assert Path(output.errors).read_bytes() == b""


async def test_export_with_failed_targets(
    start_sim: StartSim, layout_registry: SimRegistry, tmp_path: Path
) -> None:
    sim = await start_sim(layout_registry)
    output = output_in(tmp_path)
    config = make_config(
        sim.url, projects=("other", "nope"), output=output, page_size=50
    )
    assert await export(config, resume=False, stats=Stats()) == EXIT_PARTIAL
    assert sort_rows(read_jsonl(output.path)) == only(
        layout_registry.truth_rows("current"), project_id="other"
    )
    (failure,) = read_jsonl(output.errors)
    assert list(failure) == [
        "action",
        "params",
        "ret_code",
        "http_status",
        "message",
        "attempts",
    ]
    assert failure["action"] == "GetRepo"
    assert failure["params"] == {
        "ProjectId": "nope",
        "Type": failure["params"]["Type"],
        "Offset": 0,
        "Limit": 50,
    }
    assert (failure["ret_code"], failure["http_status"], failure["attempts"]) == (
        292,
        None,
        1,
    )
    assert failure["message"] == "project 'nope' not found"
    assert not Path(output.path + ".part").exists()


async def test_nothing_exported_keeps_the_previous_export(
    start_sim: StartSim, layout_registry: SimRegistry, tmp_path: Path
) -> None:
    sim = await start_sim(layout_registry)
    output = output_in(tmp_path)
    previous = b'{"an": "earlier export"}\n'
    Path(output.path).write_bytes(previous)
    config = make_config(sim.url, projects=("nope",), output=output)
    stats = Stats()
    with pytest.raises(CrawlerError) as info:
        await export(config, resume=False, stats=stats)
    assert str(info.value) == (
        f"nothing could be exported: 1 target failed, listed in {output.errors}; "
        f"{output.path} was left as it was"
    )
    assert Path(output.path).read_bytes() == previous
    (failure,) = read_jsonl(output.errors)
    assert failure == {
        "action": "GetRepo",
        "params": {
            "ProjectId": "nope",
            "Type": failure["params"]["Type"],
            "Offset": 0,
            "Limit": 100,
        },
        "ret_code": 292,
        "http_status": None,
        "message": "project 'nope' not found",
        "attempts": 1,
    }
    assert (stats.tags, stats.failures) == (0, 1)
    # Nothing to resume from: no part file, no checkpoint.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["errors.jsonl", "tags.jsonl"]


async def test_an_endpoint_that_is_not_the_api_keeps_the_previous_export(
    html_server: HtmlServer, tmp_path: Path
) -> None:
    output = output_in(tmp_path)
    previous = b'{"an": "earlier export"}\n'
    Path(output.path).write_bytes(previous)
    config = make_config(html_server.url, projects=BOTH_PROJECTS, output=output)
    with pytest.raises(EndpointError) as info:
        await export(config, resume=False, stats=Stats())
    assert str(info.value) == (
        f"GetRepo: cannot use {html_server.url}: answer is not an API "
        f"response: {NOT_THE_API_PAGE.decode()!r}; check api.endpoint, "
        "CRAWLER_ENDPOINT or --endpoint"
    )
    assert Path(output.path).read_bytes() == previous
    assert Path(output.errors).read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["errors.jsonl", "tags.jsonl"]


async def test_a_refused_key_leaves_no_export_behind(
    start_sim: StartSim, layout_registry: SimRegistry, tmp_path: Path
) -> None:
    sim = await start_sim(layout_registry)
    output = output_in(tmp_path)
    config = make_config(
        sim.url, projects=("acme",), output=output, private_key="wrong-key-123"
    )
    with pytest.raises(AuthError):
        await export(config, resume=False, stats=Stats())
    assert not Path(output.path).exists()
    assert not Path(output.path + ".part").exists()
    assert not Path(output.path + ".checkpoint").exists()
    for path in tmp_path.iterdir():
        assert b"wrong-key-123" not in path.read_bytes()


async def test_export_lines_render_the_documented_example(tmp_path: Path) -> None:
    path = str(tmp_path / "tags.jsonl")
    sink = JsonlExport(path, str(tmp_path / "errors.jsonl"), {"crawl": "x"})
    sink.open(resume=False)
    assert Path(path + ".part").exists()
    assert not Path(path).exists()  # written under a temporary name
    documented = {"Digest": "VzEacruq", "TagName": "OLlvXCrO", "UpdateTime": "CTydYXMK"}
    await sink.rows(
        ImageRef(None, "web", "api"),
        [documented, {"TagName": "v1", "UpdateTime": 1767225600}],
    )
    await sink.rows(
        ImageRef("org-ml", 'a"b', "ü"), [{"TagName": "x", "UpdateTime": "t"}]
    )
    await sink.done(ImageRef(None, "web", "api"), 2)
    sink.commit()
    assert not Path(path + ".part").exists()
    assert Path(path).read_bytes() == (
        b'{"project_id":null,"repo_name":"web","image_name":"api",'
        b'"tag_name":"OLlvXCrO","digest":"VzEacruq","update_time":"CTydYXMK"}\n'
        b'{"project_id":null,"repo_name":"web","image_name":"api",'
        b'"tag_name":"v1","digest":null,"update_time":1767225600}\n'
        b'{"project_id":"org-ml","repo_name":"a\\"b","image_name":"\xc3\xbc",'
        b'"tag_name":"x","digest":null,"update_time":"t"}\n'
    )


def test_tag_record() -> None:
    tag = Tag("org-ml", "web", "api", "v1", None, 5)
    assert tag.to_dict() == {
        "project_id": "org-ml",
        "repo_name": "web",
        "image_name": "api",
        "tag_name": "v1",
        "digest": None,
        "update_time": 5,
    }
    assert list(tag.to_dict()) == ROW_KEYS


def test_stats_as_dict_keys() -> None:
    stats = Stats(requests=3, retries=1, tags=10)
    summary = stats.as_dict()
    assert list(summary) == [
        "repos",
        "images",
        "tags",
        "requests",
        "retries",
        "throttled",
        "failures",
        "repasses",
        "elapsed_s",
        "requests_per_s",
    ]
    assert (summary["requests"], summary["retries"], summary["tags"]) == (3, 1, 10)


async def test_an_unwritable_export_fails_cleanly(
    start_sim: StartSim, layout_registry: SimRegistry, tmp_path: Path
) -> None:
    sim = await start_sim(layout_registry)
    output = OutputConfig(
        path=str(tmp_path / "missing-dir" / "tags.jsonl"),
        errors=str(tmp_path / "errors.jsonl"),
    )
    config = make_config(sim.url, projects=("acme",), output=output)
    with pytest.raises(OutputError) as info:
        await export(config, resume=False, stats=Stats())
    message = str(info.value)
    # A file left open warns when it is collected: let that happen here (the
    # traceback holds it until then), so that it is reported against this
    # test rather than a later one.
    del info
    gc.collect()
    assert message == (
        f"cannot write {output.path}: No such file or directory; "
        "choose a writable location with --out / --errors"
    )
    assert dict(sim.stats.requests) == {}  # it failed before any request
    assert list(tmp_path.iterdir()) == []  # and left no stray file behind


@pytest.mark.parametrize(
    "scope",
    [
        {"projects": ("other", "other")},
        {"projects": ("acme",), "repos": ("vault", "web", "vault")},
        {"projects": ("acme",), "images": (("web", "three"), ("web", "three"))},
    ],
    ids=["project", "repository", "image"],
)
async def test_a_target_named_twice_is_exported_once(
    start_sim: StartSim, layout_registry: SimRegistry, scope: dict[str, Any]
) -> None:
    sim = await start_sim(layout_registry)
    try:
        config = make_config(sim.url, **scope)
    except ConfigError:
        return  # refusing the repeated name is as good as crawling it once
    rows, crawler = await crawl_rows(config)
    twice = [key for key, n in Counter(map(row_key, rows)).items() if n > 1]
    assert not twice, f"{len(twice)} tags exported twice, e.g. {twice[0]}"
    assert crawler.failures == []
