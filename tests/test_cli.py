"""The ``crawler`` command, run as a subprocess against ``crawler simulate``
running as another process on a loopback port."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import (
    DEAD_ENDPOINT,
    NOT_THE_API_PAGE,
    SIM_SEED,
    SIM_TAGS,
    HtmlServer,
    SimProcess,
    clean_env,
    crawler_command,
    read_jsonl,
    sort_rows,
)

from crawler._simulator import DEMO_PRIVATE_KEY, DEMO_PUBLIC_KEY, SimRegistry

WRONG_KEY = "wrong-private-key-0x5eC7"

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run(tmp_path: Path) -> Run:
    """``run(*args, env={...})``: the crawler command in the test's directory."""

    def run(
        *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*crawler_command(), *args],
            cwd=tmp_path,
            env=clean_env(**(env or {})),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=90,
        )

    return run


def toml_config(
    endpoint: str | None,
    *,
    keys: tuple[str, str] | None = (DEMO_PUBLIC_KEY, DEMO_PRIVATE_KEY),
    projects: tuple[str, ...] = ("org-default", "org-ml"),
    extra_crawl: str = "",
) -> str:
    api = []
    if endpoint is not None:
        api.append(f'endpoint = "{endpoint}"')
    if keys is not None:
        api += [f'public_key = "{keys[0]}"', f'private_key = "{keys[1]}"']
    project_list = ", ".join(f'"{p}"' for p in projects)
    return (
        "[api]\n"
        + "\n".join(api)
        + f"\n\n[crawl]\nprojects = [{project_list}]\nrate = 0\n{extra_crawl}\n"
        + '[output]\npath = "tags.jsonl"\nerrors = "errors.jsonl"\n'
    )


@pytest.fixture
def config_file(tmp_path: Path, sim_process: SimProcess) -> Path:
    path = tmp_path / "crawler.toml"
    path.write_text(toml_config(sim_process.url))
    return path


def _get(url: str, method: str = "GET") -> bytes:
    # No proxy: the simulator is on loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, method=method)
    with opener.open(request, timeout=30) as response:
        body: bytes = response.read()
    return body


def sim_truth(sim: SimProcess) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in _get(sim.url + "/_sim/truth").splitlines()]


def reset_stats(sim: SimProcess) -> None:
    _get(sim.url + "/_sim/reset-stats", method="POST")


def sim_requests(sim: SimProcess) -> dict[str, int]:
    requests: dict[str, int] = orjson.loads(_get(sim.url + "/_sim/stats"))["requests"]
    return requests


@pytest.fixture(scope="module")
def registry() -> SimRegistry:
    """The registry ``sim_process`` serves, built here from the same seed."""
    return SimRegistry(seed=SIM_SEED, total_tags=SIM_TAGS)


@pytest.fixture(scope="module")
def truth(registry: SimRegistry) -> list[dict[str, Any]]:
    return registry.truth_rows("current")


def lines(text: str) -> list[str]:
    return text.splitlines()


def summary_pattern(repos: int, images: int, tags: int, failures: int = 0) -> str:
    return (
        rf"crawler: {repos:,} repositories, {images:,} images, {tags:,} tags "
        r"in \d+\.\ds; ([\d,]+) requests \([\d,.]+/s\), 0 retries, 0 throttled, "
        rf"{failures:,} failures"
    )


def files_in(directory: Path) -> Iterator[Path]:
    return (path for path in directory.rglob("*") if path.is_file())


# ---------------------------------------------------------------- simulate


def test_simulate_announces_itself(
    sim_process: SimProcess, registry: SimRegistry
) -> None:
    counts = registry.counts()
    first = sim_process.output().splitlines()[0]
    assert first == (
        f"registry simulator on {sim_process.url}: {counts['projects']} projects, "
        f"{counts['repos']} repositories, {counts['images']} images, "
        f"{counts['tags']} tags; public key {DEMO_PUBLIC_KEY!r}, "
        f"private key {DEMO_PRIVATE_KEY!r}"
    )


def test_simulator_process_serves_the_seeded_registry(
    sim_process: SimProcess, truth: list[dict[str, Any]]
) -> None:
    assert sim_truth(sim_process) == truth
    assert len(truth) == SIM_TAGS


# ---------------------------------------------------------------- crawl


@pytest.mark.parametrize("method", ["get", "form", "json"])
def test_crawl_exports_every_tag(
    run: Run,
    tmp_path: Path,
    config_file: Path,
    sim_process: SimProcess,
    registry: SimRegistry,
    truth: list[dict[str, Any]],
    method: str,
) -> None:
    reset_stats(sim_process)
    result = run("crawl", "--config", str(config_file), "--method", method)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""

    rows = read_jsonl(tmp_path / "tags.jsonl")
    assert len(rows) == len(truth)
    assert sort_rows(rows) == truth
    assert (tmp_path / "errors.jsonl").read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "crawler.toml",
        "errors.jsonl",
        "tags.jsonl",
    ]

    # The summary is the only line on stderr, and its counts are right.
    counts = registry.counts()
    (summary,) = lines(result.stderr)
    match = re.fullmatch(
        summary_pattern(counts["repos"], counts["images"], SIM_TAGS), summary
    )
    assert match, summary
    assert int(match[1].replace(",", "")) == sum(sim_requests(sim_process).values())


def test_crawl_to_standard_output(
    run: Run, tmp_path: Path, config_file: Path, truth: list[dict[str, Any]]
) -> None:
    result = run("crawl", "--config", str(config_file), "--out", "-", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert sort_rows(rows) == truth
    assert not (tmp_path / "tags.jsonl").exists()


def test_out_and_errors_options(
    run: Run, tmp_path: Path, config_file: Path, truth: list[dict[str, Any]]
) -> None:
    out, errors = tmp_path / "sub" / "x.jsonl", tmp_path / "sub" / "e.jsonl"
    out.parent.mkdir()
    result = run(
        "crawl",
        "--config",
        str(config_file),
        "--out",
        str(out),
        "--errors",
        str(errors),
    )
    assert result.returncode == 0, result.stderr
    assert sort_rows(read_jsonl(out)) == truth
    assert errors.read_bytes() == b""
    assert not (tmp_path / "tags.jsonl").exists()


def test_project_option_replaces_the_configured_projects(
    run: Run, tmp_path: Path, config_file: Path, truth: list[dict[str, Any]]
) -> None:
    result = run("crawl", "--config", str(config_file), "--project", "org-ml")
    assert result.returncode == 0, result.stderr
    org_ml = [row for row in truth if row["project_id"] == "org-ml"]
    assert org_ml
    assert sort_rows(read_jsonl(tmp_path / "tags.jsonl")) == org_ml


def test_an_unknown_project_exits_3_with_an_error_line(
    run: Run, tmp_path: Path, config_file: Path, truth: list[dict[str, Any]]
) -> None:
    result = run(
        "crawl",
        "--config",
        str(config_file),
        "--project",
        "nope",
        "--project",
        "org-ml",
    )
    assert result.returncode == 3, result.stderr
    org_ml = [row for row in truth if row["project_id"] == "org-ml"]
    assert sort_rows(read_jsonl(tmp_path / "tags.jsonl")) == org_ml
    (failure,) = read_jsonl(tmp_path / "errors.jsonl")
    assert failure == {
        "action": "GetRepo",
        "params": {
            "Type": failure["params"]["Type"],
            "ProjectId": "nope",
            "Offset": 0,
            "Limit": 100,
        },
        "ret_code": 292,
        "http_status": None,
        "message": "project 'nope' not found",
        "attempts": 1,
    }
    assert lines(result.stderr)[-1].endswith(" 1 failures")


def test_nothing_exported_exits_1_and_keeps_the_previous_export(
    run: Run, tmp_path: Path, config_file: Path
) -> None:
    previous = b'{"an": "earlier export"}\n'
    (tmp_path / "tags.jsonl").write_bytes(previous)
    result = run("crawl", "--config", str(config_file), "--project", "nope")
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert lines(result.stderr) == [
        "crawler: WARNING: giving up on project nope: GetRepo: RetCode 292: "
        "project 'nope' not found",
        "crawler: error: nothing could be exported: 1 target failed, listed in "
        "errors.jsonl; tags.jsonl was left as it was",
    ]
    assert (tmp_path / "tags.jsonl").read_bytes() == previous
    (failure,) = read_jsonl(tmp_path / "errors.jsonl")
    assert failure == {
        "action": "GetRepo",
        "params": {
            "Type": failure["params"]["Type"],
            "ProjectId": "nope",
            "Offset": 0,
            "Limit": 100,
        },
        "ret_code": 292,
        "http_status": None,
        "message": "project 'nope' not found",
        "attempts": 1,
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "crawler.toml",
        "errors.jsonl",
        "tags.jsonl",
    ]


def test_an_endpoint_that_is_not_the_api_is_one_line_and_exit_1(
    run: Run, tmp_path: Path, html_server: HtmlServer
) -> None:
    config = tmp_path / "crawler.toml"
    config.write_text(toml_config(html_server.url, extra_crawl="max_retries = 20"))
    previous = b'{"an": "earlier export"}\n'
    (tmp_path / "tags.jsonl").write_bytes(previous)
    result = run("crawl", "--config", str(config))
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert lines(result.stderr) == [
        f"crawler: error: GetRepo: cannot use {html_server.url}: answer is not an "
        f"API response: {NOT_THE_API_PAGE.decode()!r}; check api.endpoint, "
        "CRAWLER_ENDPOINT or --endpoint"
    ]
    assert (tmp_path / "tags.jsonl").read_bytes() == previous
    assert (tmp_path / "errors.jsonl").read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "crawler.toml",
        "errors.jsonl",
        "tags.jsonl",
    ]
    # It stopped after 8 such answers (and what was then in flight), long
    # before the 4 listings could spend their 21 tries each.
    assert 8 <= html_server.requests < 4 * 21


def test_page_size_option_sets_the_requests(
    run: Run,
    tmp_path: Path,
    config_file: Path,
    sim_process: SimProcess,
    registry: SimRegistry,
    truth: list[dict[str, Any]],
) -> None:
    reset_stats(sim_process)
    result = run(
        "crawl",
        "--config",
        str(config_file),
        "--page-size",
        "7",
        "--concurrency",
        "3",
        "--rate",
        "0",
    )
    assert result.returncode == 0, result.stderr
    assert sort_rows(read_jsonl(tmp_path / "tags.jsonl")) == truth
    per_image = Counter(
        (row["project_id"], row["repo_name"], row["image_name"]) for row in truth
    )
    empty_images = registry.counts()["images"] - len(per_image)
    assert empty_images > 0  # the simulator always has an image without tags
    expected = sum(math.ceil(count / 7) for count in per_image.values()) + empty_images
    assert sim_requests(sim_process)["GetImageTag"] == expected


@pytest.mark.parametrize(
    ("file_endpoint", "env_endpoint", "cli_endpoint", "status"),
    [
        ("dead", None, "sim", 0),  # the command line beats the file
        ("dead", "sim", None, 0),  # the environment beats the file
        ("dead", "dead", "sim", 0),  # the command line beats the environment
        ("sim", "sim", "dead", 1),  # ... even when it is wrong
        ("sim", "dead", None, 1),  # the environment beats the file when wrong
    ],
)
def test_endpoint_precedence(
    run: Run,
    tmp_path: Path,
    sim_process: SimProcess,
    file_endpoint: str,
    env_endpoint: str | None,
    cli_endpoint: str | None,
    status: int,
) -> None:
    url = {"sim": sim_process.url, "dead": DEAD_ENDPOINT}
    config = tmp_path / "crawler.toml"
    config.write_text(toml_config(url[file_endpoint], projects=("org-ml",)))
    args = ["crawl", "--config", str(config), "-q"]
    if cli_endpoint is not None:
        args += ["--endpoint", url[cli_endpoint]]
    env = {} if env_endpoint is None else {"CRAWLER_ENDPOINT": url[env_endpoint]}
    result = run(*args, env=env)
    assert result.returncode == status, result.stderr
    if status:
        (line,) = lines(result.stderr)
        assert line.startswith(
            f"crawler: error: GetRepo: cannot connect to {DEAD_ENDPOINT}"
        )


def test_keys_from_the_environment(
    run: Run, tmp_path: Path, sim_process: SimProcess, truth: list[dict[str, Any]]
) -> None:
    config = tmp_path / "crawler.toml"
    config.write_text(toml_config(sim_process.url, keys=None))
    env = {
        "CRAWLER_PUBLIC_KEY": DEMO_PUBLIC_KEY,
        "CRAWLER_PRIVATE_KEY": DEMO_PRIVATE_KEY,
    }
    result = run("crawl", "--config", str(config), "-q", env=env)
    assert result.returncode == 0, result.stderr
    assert sort_rows(read_jsonl(tmp_path / "tags.jsonl")) == truth


# ---------------------------------------------------------------- keys


def test_a_wrong_private_key_is_one_line_and_exit_1(
    run: Run, tmp_path: Path, sim_process: SimProcess
) -> None:
    config = tmp_path / "crawler.toml"
    config.write_text(toml_config(sim_process.url, keys=(DEMO_PUBLIC_KEY, WRONG_KEY)))
    result = run("crawl", "--config", str(config))
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = lines(result.stderr)
    assert line == (
        "crawler: error: GetRepo: RetCode 171: Signature does not match the "
        "parameters; sign every parameter but Signature with the private key of "
        "PublicKey (the private key does not fit the public key: check "
        "api.private_key or CRAWLER_PRIVATE_KEY)"
    )
    assert WRONG_KEY not in result.stderr
    # Nothing was exported, so nothing is left to resume from.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "crawler.toml",
        "errors.jsonl",
    ]
    assert (tmp_path / "errors.jsonl").read_bytes() == b""


@pytest.mark.parametrize("command", ["crawl", "tags"])
def test_the_private_key_is_written_nowhere(
    run: Run, tmp_path: Path, sim_process: SimProcess, command: str
) -> None:
    config = tmp_path / "crawler.toml"
    config.write_text(toml_config(sim_process.url, keys=None))
    env = {"CRAWLER_PUBLIC_KEY": DEMO_PUBLIC_KEY, "CRAWLER_PRIVATE_KEY": WRONG_KEY}
    args = ["--config", str(config), "-vv"]
    if command == "tags":
        args += ["web", "api"]
    result = run(command, *args, env=env)
    assert result.returncode == 1
    assert "RetCode 171" in result.stderr
    assert WRONG_KEY not in result.stdout
    assert WRONG_KEY not in result.stderr
    for path in files_in(tmp_path):
        assert WRONG_KEY.encode() not in path.read_bytes(), path


def test_a_good_private_key_is_written_nowhere(
    run: Run, tmp_path: Path, config_file: Path
) -> None:
    result = run(
        "crawl",
        "--config",
        str(config_file),
        "-vv",
        "--project",
        "nope",
        "--project",
        "org-ml",
    )
    assert result.returncode == 3
    assert DEMO_PRIVATE_KEY not in result.stdout + result.stderr
    for path in files_in(tmp_path):
        if path != config_file:
            assert DEMO_PRIVATE_KEY.encode() not in path.read_bytes(), path


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[api]\nendpoit = "http://127.0.0.1:9"\n',
            "unknown key api.endpoit (did you mean 'endpoint'?); "
            "config.example.toml lists every key",
        ),
        (
            '[crawl]\npage_size = "ten"\n',
            "crawl.page_size must be an integer, not 'ten'",
        ),
        (
            "[api\n",
            None,  # TOML's own message, checked for its start below
        ),
        (
            '[api]\nendpoint = "http://127.0.0.1:9"\n',
            "api.public_key is not set; put it in the config file's [api] table "
            "or export CRAWLER_PUBLIC_KEY",
        ),
        (
            '[api]\nendpoint = "http://127.0.0.1:9"\npublic_key = "p"\n',
            "api.private_key is not set; put it in the config file's [api] table "
            "or export CRAWLER_PRIVATE_KEY",
        ),
    ],
    ids=["unknown-key", "wrong-type", "not-toml", "no-public-key", "no-private-key"],
)
@pytest.mark.parametrize("command", ["crawl", "tags"])
def test_bad_config_is_one_line_and_exit_1(
    run: Run, tmp_path: Path, command: str, text: str, message: str | None
) -> None:
    config = tmp_path / "crawler.toml"
    config.write_text(text)
    args = [command, "--config", str(config)]
    if command == "tags":
        args += ["web", "api"]
    result = run(*args)
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = lines(result.stderr)
    if message is None:
        assert line.startswith(
            f"crawler: error: config file {str(config)!r} is not valid TOML: "
        )
    else:
        assert line == f"crawler: error: {message}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crawler.toml"]


def test_a_missing_config_file(run: Run, tmp_path: Path) -> None:
    result = run("crawl", "--config", "absent.toml")
    assert result.returncode == 1
    assert lines(result.stderr) == [
        "crawler: error: config file 'absent.toml' does not exist; "
        "copy config.example.toml and edit it"
    ]


def test_an_unwritable_output_is_one_line_and_exit_1(
    run: Run, tmp_path: Path, config_file: Path
) -> None:
    out = tmp_path / "missing-dir" / "tags.jsonl"
    result = run("crawl", "--config", str(config_file), "--out", str(out))
    assert result.returncode == 1
    assert lines(result.stderr) == [
        f"crawler: error: cannot write {out}: No such file or directory; "
        "choose a writable location with --out / --errors"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crawler.toml"]


@pytest.mark.parametrize(
    ("errors", "message"),
    [
        (
            "tags.jsonl",
            "output.errors 'tags.jsonl' and output.path 'tags.jsonl' would write "
            "the same files; choose another --errors",
        ),
        (
            "tags.jsonl.part",
            "output.errors 'tags.jsonl.part' and output.path 'tags.jsonl' would "
            "write the same files; choose another --errors",
        ),
        (
            "tags.jsonl.checkpoint",
            "output.errors 'tags.jsonl.checkpoint' and output.path 'tags.jsonl' "
            "would write the same files; choose another --errors",
        ),
        (
            "tags.jsonl.lock",
            "output.errors 'tags.jsonl.lock' and output.path 'tags.jsonl' would "
            "write the same files; choose another --errors",
        ),
        ("-", "output.errors must be a file, not standard output"),
    ],
    ids=["export", "part", "checkpoint", "lock", "stdout"],
)
def test_an_errors_file_that_clashes_with_the_export_is_one_line_and_exit_1(
    run: Run, tmp_path: Path, config_file: Path, errors: str, message: str
) -> None:
    previous = b'{"an": "earlier export"}\n'
    (tmp_path / "tags.jsonl").write_bytes(previous)
    result = run("crawl", "--config", str(config_file), "--errors", errors)
    assert result.returncode == 1
    assert result.stdout == ""
    assert lines(result.stderr) == [f"crawler: error: {message}"]
    assert (tmp_path / "tags.jsonl").read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crawler.toml", "tags.jsonl"]


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["crawl", "--page-size", "0"],
        ["crawl", "--concurrency", "-2"],
        ["crawl", "--rate", "fast"],
        ["crawl", "--method", "put"],
        ["crawl", "--bogus"],
        ["tags", "only-a-repo"],
        ["simulate", "--port", "x"],
    ],
    ids=lambda args: " ".join(args) or "nothing",
)
def test_usage_errors_exit_2(run: Run, tmp_path: Path, args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: crawler")
    assert re.match(r"crawler( \w+)?: error: ", lines(result.stderr)[-1])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "command", "unknown"),
    [
        (["crawl", "--bogus"], "crawl", "--bogus"),
        (["crawl", "extra"], "crawl", "extra"),
        (["tags", "web", "api", "--bogus"], "tags", "--bogus"),
        (["tags", "web", "api", "more"], "tags", "more"),
        (["simulate", "--bogus", "1"], "simulate", "--bogus 1"),
        (["demo", "--bogus"], "demo", "--bogus"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_unknown_arguments_are_reported_by_the_command(
    run: Run, tmp_path: Path, args: list[str], command: str, unknown: str
) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    # The command's own usage, not the top-level one.
    assert result.stderr.startswith(f"usage: crawler {command} [-h]")
    assert lines(result.stderr)[-1] == (
        f"crawler {command}: error: unrecognized arguments: {unknown}"
    )
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- tags


def biggest_image(truth: list[dict[str, Any]], project_id: str) -> tuple[str, str]:
    counts = Counter(
        (row["repo_name"], row["image_name"])
        for row in truth
        if row["project_id"] == project_id
    )
    return counts.most_common(1)[0][0]


def test_tags_prints_every_tag_of_an_image(
    run: Run, config_file: Path, truth: list[dict[str, Any]]
) -> None:
    repo, image = biggest_image(truth, "org-default")
    result = run("tags", repo, image, "--config", str(config_file), "--page-size", "33")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = [orjson.loads(line) for line in result.stdout.splitlines()]
    expected = [
        {**row, "project_id": None}  # the default project's id is not reported
        for row in truth
        if (row["project_id"], row["repo_name"], row["image_name"])
        == ("org-default", repo, image)
    ]
    assert len(expected) > 33
    assert sort_rows(rows) == expected


def test_tags_of_another_project_and_one_tag(
    run: Run, config_file: Path, truth: list[dict[str, Any]]
) -> None:
    repo, image = biggest_image(truth, "org-ml")
    of_image = [
        row
        for row in truth
        if (row["project_id"], row["repo_name"], row["image_name"])
        == ("org-ml", repo, image)
    ]
    config = str(config_file)
    every = run("tags", repo, image, "--project", "org-ml", "--config", config)
    assert every.returncode == 0, every.stderr
    assert sort_rows([orjson.loads(x) for x in every.stdout.splitlines()]) == of_image

    wanted = of_image[len(of_image) // 2]
    one = run(
        "tags",
        repo,
        image,
        "--project",
        "org-ml",
        "--tag",
        wanted["tag_name"],
        "--config",
        config,
    )
    assert one.returncode == 0, one.stderr
    assert [orjson.loads(x) for x in one.stdout.splitlines()] == [wanted]


def test_tags_without_project_use_the_one_configured_project(
    run: Run, tmp_path: Path, sim_process: SimProcess, truth: list[dict[str, Any]]
) -> None:
    config = tmp_path / "crawler.toml"
    config.write_text(toml_config(sim_process.url, projects=("org-ml",)))
    repo, image = biggest_image(truth, "org-ml")
    result = run("tags", repo, image, "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = [orjson.loads(line) for line in result.stdout.splitlines()]
    expected = [
        row
        for row in truth
        if (row["project_id"], row["repo_name"], row["image_name"])
        == ("org-ml", repo, image)
    ]
    assert expected
    assert sort_rows(rows) == expected


def test_tags_of_a_tag_that_does_not_exist(
    run: Run, config_file: Path, truth: list[dict[str, Any]]
) -> None:
    repo, image = biggest_image(truth, "org-ml")
    result = run(
        "tags",
        repo,
        image,
        "--project",
        "org-ml",
        "--tag",
        "no-such-tag",
        "--config",
        str(config_file),
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert lines(result.stderr) == [
        f"crawler: error: {repo}/{image} has no tag 'no-such-tag'"
    ]


def test_tags_of_an_unknown_image(
    run: Run, config_file: Path, truth: list[dict[str, Any]]
) -> None:
    repo = truth[0]["repo_name"]
    result = run(
        "tags", repo, "ghost", "--project", "org-default", "--config", str(config_file)
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert lines(result.stderr) == [
        f"crawler: error: GetImageTag: RetCode 240: image 'ghost' not found in {repo!r}"
    ]


# ---------------------------------------------------------------- demo


def test_demo_exports_and_checks_the_simulator(run: Run, tmp_path: Path) -> None:
    result = run("demo", "--tags", "1500", "--rate", "0", "--out", "demo.jsonl")
    assert result.returncode == 0, result.stderr
    truth = SimRegistry(seed=7, total_tags=1_500).truth_rows("current")
    assert sort_rows(read_jsonl(tmp_path / "demo.jsonl")) == truth
    assert "crawler demo: demo.jsonl holds all 1,500 tags" in result.stderr
    assert (tmp_path / "errors.jsonl").read_bytes() == b""


def test_python_dash_m_is_the_same_command(run: Run, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crawler", "crawl", "--page-size", "0"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "must be a whole number above 0, not '0'" in result.stderr
