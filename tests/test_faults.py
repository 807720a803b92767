"""Fault injection: crawl a misbehaving simulator, then check every exported row.

Every test serves a simulated registry on 127.0.0.1, crawls it over a real
socket with the real client, pipeline and export, and compares the JSON Lines
export with the simulator's ground truth row by row.  The simulator's own
counters prove that the faults, throttling or drift really happened, so no
test can pass by never meeting what it is about.

Time is kept down by tiny backoffs, short timeouts where a request hangs on
purpose, and small registries; the soak alone crawls the full default size.
The command-line tests run ``crawler`` as a child process, against a
``crawler simulate`` child process where they need a server.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from crawler import ApiError, AuthError, Config, Stats, TagCrawler
from crawler._cli import export
from crawler._simulator import (
    DEFAULT_FAULTS,
    DEFAULT_PROJECT_ID,
    DEMO_PRIVATE_KEY,
    DEMO_PUBLIC_KEY,
    SECOND_PROJECT_ID,
    SimOptions,
    SimRegistry,
    SimServer,
    SimStats,
)

PROJECTS = (DEFAULT_PROJECT_ID, SECOND_PROJECT_ID)

# Crawl settings that keep a test short: retries wait at most 50 ms, no
# client-side rate limit unless a test sets one, small pages so that even a
# small registry takes many requests (and so meets many faults).
FAST_CRAWL: dict[str, Any] = {
    "projects": PROJECTS,
    "page_size": 20,
    "concurrency": 16,
    "rate_per_s": 0.0,
    "backoff_base_s": 0.01,
    "backoff_cap_s": 0.05,
}

FAULT_RATE = 0.25  # a quarter of all requests fail in the single-fault tests
HANG_TIMEOUT_S = 0.5  # api.timeout when the server may never answer

Row = dict[str, Any]
RowKey = tuple[str, str, str, str]


# ---------------------------------------------------------------- comparing


def row_key(row: Mapping[str, Any]) -> RowKey:
    return (
        str(row["project_id"]),
        row["repo_name"],
        row["image_name"],
        row["tag_name"],
    )


def read_jsonl(path: Path) -> list[Row]:
    with open(path, "rb") as file:
        return [orjson.loads(line) for line in file]


def export_problems(
    rows: Sequence[Row], must_hold: Sequence[Row], may_hold: Sequence[Row]
) -> list[str]:
    """What is wrong with ``rows``, as sentences with examples.

    Every row of ``must_hold`` must be exported exactly once, nothing outside
    ``may_hold`` may be, and each exported row must equal its ``may_hold``
    row field by field.  With both the same, the export must be exact.
    """
    counts = Counter(row_key(row) for row in rows)
    allowed = {row_key(row): row for row in may_hold}
    twice = sorted(key for key, n in counts.items() if n > 1)
    missing = sorted({row_key(row) for row in must_hold} - counts.keys())
    unknown = sorted(counts.keys() - allowed.keys())
    wrong = sorted(
        row_key(row)
        for row in rows
        if row_key(row) in allowed and row != allowed[row_key(row)]
    )
    problems = []
    for what, keys in (
        ("exported more than once", twice),
        ("missing", missing),
        ("not in the registry", unknown),
        ("with fields unlike the truth", wrong),
    ):
        if keys:
            problems.append(f"{len(keys)} rows {what}, e.g. {keys[:3]}")
    return problems


def assert_exact(rows: Sequence[Row], truth: Sequence[Row]) -> None:
    """The export holds exactly the rows of ``truth``, each once."""
    problems = export_problems(rows, truth, truth)
    assert not problems, "; ".join(problems)
    assert sorted(rows, key=row_key) == list(truth)


# ---------------------------------------------------------------- in-process


@dataclass
class Outcome:
    """What one crawl of a simulator left behind."""

    status: int  # the exit status ``crawler crawl`` would return
    rows: list[Row]  # the export
    failures: list[Row]  # the errors sink
    stats: Stats  # the crawler's counters
    sim: SimStats  # the simulator's counters


def fast_config(
    endpoint: str,
    tmp_path: Path,
    *,
    api: Mapping[str, Any] | None = None,
    crawl: Mapping[str, Any] | None = None,
) -> Config:
    """A validated config aimed at ``endpoint``, exporting into ``tmp_path``;
    ``api`` and ``crawl`` override fields of the fast defaults."""
    return Config().replace(
        api={
            "endpoint": endpoint,
            "public_key": DEMO_PUBLIC_KEY,
            "private_key": DEMO_PRIVATE_KEY,
            "timeout_s": 5.0,
            "connect_timeout_s": 2.0,
            **(api or {}),
        },
        crawl={**FAST_CRAWL, **(crawl or {})},
        output={
            "path": str(tmp_path / "tags.jsonl"),
            "errors": str(tmp_path / "errors.jsonl"),
        },
    )


async def crawl_sim(
    tmp_path: Path,
    registry: SimRegistry,
    options: SimOptions,
    *,
    api: Mapping[str, Any] | None = None,
    crawl: Mapping[str, Any] | None = None,
) -> Outcome:
    """Serve ``registry`` on loopback and export it as ``crawler crawl`` does."""
    async with SimServer(registry, options, host="127.0.0.1") as sim:
        config = fast_config(sim.url, tmp_path, api=api, crawl=crawl)
        stats = Stats()
        status = await export(config, resume=False, stats=stats)
    return Outcome(
        status,
        read_jsonl(tmp_path / "tags.jsonl"),
        read_jsonl(tmp_path / "errors.jsonl"),
        stats,
        sim.stats,
    )


def assert_complete(outcome: Outcome) -> None:
    """The crawl ended with nothing failed."""
    assert outcome.failures == []
    assert outcome.stats.failures == 0
    assert outcome.status == 0


# ---------------------------------------------------------------- faults


THROTTLING_FAULTS = frozenset({"retcode_153", "http_429", "http_429_date"})


@pytest.mark.parametrize(
    ("kind", "total_tags"),
    [
        ("reset", 1_500),
        ("short_body", 1_500),
        ("html_200", 1_500),
        ("http_502", 1_500),
        ("http_503", 1_500),
        ("http_504", 1_500),
        ("retcode_150", 1_500),
        ("retcode_153", 1_500),
        # Each answer pauses the whole crawl for its Retry-After of 1 s.
        ("http_429", 500),
        ("http_429_date", 1_500),
        # Each hang costs a request its whole timeout.
        ("hang", 800),
    ],
)
async def test_one_fault_kind_at_a_quarter_of_requests(
    tmp_path: Path, kind: str, total_tags: int
) -> None:
    registry = SimRegistry(seed=31, total_tags=total_tags)
    options = SimOptions(fault_rate=FAULT_RATE, faults=(kind,), seed=5)
    timeout_s = HANG_TIMEOUT_S if kind == "hang" else 5.0

    outcome = await crawl_sim(tmp_path, registry, options, api={"timeout_s": timeout_s})

    injected = outcome.sim.faults[kind]
    assert set(outcome.sim.faults) == {kind}
    assert injected >= 5, f"only {injected} {kind} faults were injected"
    assert_complete(outcome)
    assert_exact(outcome.rows, registry.truth_rows("current"))
    stats = outcome.stats
    assert stats.requests == sum(outcome.sim.requests.values())
    if kind == "hang":
        # A slow but healthy answer may also run out of the short timeout.
        assert stats.retries >= injected
    elif kind in THROTTLING_FAULTS:
        # Throttling answers are counted as throttled, not as retries.
        assert stats.retries == 0
    else:
        assert stats.retries == injected  # each fault cost exactly one retry
    assert stats.throttled == (injected if kind in THROTTLING_FAULTS else 0)


@pytest.mark.parametrize("mode", ["retcode", "http"])
async def test_server_rate_limit_below_the_crawl_rate(
    tmp_path: Path, mode: str
) -> None:
    registry = SimRegistry(seed=32, total_tags=1_500)
    options = SimOptions(rate_limit=100.0, rate_limit_mode=mode, seed=6)

    outcome = await crawl_sim(tmp_path, registry, options, crawl={"rate_per_s": 200.0})

    assert outcome.sim.throttled > 0
    assert_complete(outcome)
    assert_exact(outcome.rows, registry.truth_rows("current"))
    # Every throttled answer was seen as such and retried, and nothing else
    # was: with no faults, there was no retry after a fault.
    assert outcome.stats.throttled == outcome.sim.throttled
    assert outcome.stats.retries == 0


async def test_throttling_leaves_retries_for_transient_faults(tmp_path: Path) -> None:
    """Retrying throttled answers must not use up the retries that a crawl
    may spend on real faults: a server that rate-limits hard and sometimes
    answers 502 is still read completely."""
    registry = SimRegistry(seed=33, total_tags=3_000)
    options = SimOptions(rate_limit=50.0, fault_rate=0.05, faults=("http_502",), seed=7)

    outcome = await crawl_sim(
        tmp_path, registry, options, crawl={"rate_per_s": 1_000.0}
    )

    assert outcome.sim.throttled > 0
    assert outcome.sim.faults["http_502"] > 0
    assert_complete(outcome)
    assert_exact(outcome.rows, registry.truth_rows("current"))
    # Retries after faults and throttling answers are counted apart.
    assert outcome.stats.retries == outcome.sim.faults["http_502"]
    assert outcome.stats.throttled == outcome.sim.throttled


async def test_a_page_failing_for_good_fails_only_its_listing(tmp_path: Path) -> None:
    """With no retries allowed, pages fail for good, first pages and later
    ones alike.  Each failure ends its own listing only: the crawl finishes,
    lists the failed images in the errors sink and exports the rest exactly."""
    images = {f"image-{n}": 200 for n in range(10)}  # ten pages each
    layout = {"acme": {"web": {"type": "public", "images": images}}}
    registry = SimRegistry.from_layout(layout)
    options = SimOptions(fault_rate=0.3, faults=("http_502",), seed=8)

    outcome = await crawl_sim(
        tmp_path,
        registry,
        options,
        crawl={
            "projects": ("acme",),
            "images": tuple(("web", name) for name in images),
            "max_retries": 0,
        },
    )

    assert outcome.sim.faults["http_502"] > 0
    failed = Counter(record["params"]["ImageName"] for record in outcome.failures)
    assert failed, "no listing failed"
    assert all(record["http_status"] == 502 for record in outcome.failures)
    assert all(n == 1 for n in failed.values()), failed
    truth = registry.truth_rows("current")
    whole = [row for row in truth if row["image_name"] not in failed]
    problems = export_problems(outcome.rows, whole, truth)
    assert not problems, "; ".join(problems)
    assert outcome.status == (3 if outcome.failures else 0)


async def test_image_tags_raises_the_error_of_a_failed_page() -> None:
    """``TagCrawler.image_tags`` reports a page that failed for good as that
    page's ``ApiError``, whichever page it was (``crawler tags`` prints
    an ``ApiError`` as one line; anything else as a traceback)."""
    layout = {"acme": {"web": {"type": "public", "images": {"big": 400}}}}
    registry = SimRegistry.from_layout(layout)
    options = SimOptions(fault_rate=0.3, faults=("http_502",), seed=2)
    async with SimServer(registry, options, host="127.0.0.1") as sim:
        config = fast_config(
            sim.url, Path("unused"), crawl={"projects": ("acme",), "max_retries": 0}
        )
        async with TagCrawler(config) as crawler:
            with pytest.raises(ApiError) as caught:
                await crawler.image_tags("web", "big", project_id="acme")

    # The first page was served, so the page that failed was a later one.
    assert sim.stats.requests["GetImageTag"] > 1
    assert caught.value.http_status == 502


async def test_resume_retries_the_failed_targets(tmp_path: Path) -> None:
    """A crawl that ended with failed targets keeps its checkpoint; with
    ``resume`` the next crawl reads only what is missing and completes."""
    registry = SimRegistry(seed=39, total_tags=1_500)
    # One page per listing, no retries: every fault fails its target.
    crawl = {"page_size": 10_000, "max_retries": 0}
    faulty = SimOptions(fault_rate=0.2, faults=("http_503",), seed=12)
    async with SimServer(registry, faulty, host="127.0.0.1") as sim:
        config = fast_config(sim.url, tmp_path, crawl=crawl)
        first = await export(config, resume=False, stats=Stats())
    port = int(sim.url.rsplit(":", 1)[1])

    assert sim.stats.faults["http_503"] > 0
    assert first == 3
    assert read_jsonl(tmp_path / "errors.jsonl")
    assert (tmp_path / "tags.jsonl.checkpoint").exists()

    # The same endpoint, healthy now: a resumed crawl must match its scope.
    async with SimServer(registry, SimOptions(), host="127.0.0.1", port=port) as sim:
        second = await export(config, resume=True, stats=Stats())

    assert second == 0
    assert_exact(read_jsonl(tmp_path / "tags.jsonl"), registry.truth_rows("current"))
    assert read_jsonl(tmp_path / "errors.jsonl") == []
    assert not (tmp_path / "tags.jsonl.checkpoint").exists()
    # Images finished by the first crawl were not read again.
    assert sim.stats.requests["GetImageTag"] < registry.counts()["images"]


@pytest.mark.parametrize("limit_cap", [7, 33])
async def test_silent_limit_cap(tmp_path: Path, limit_cap: int) -> None:
    registry = SimRegistry(seed=34, total_tags=1_500)
    truth = registry.truth_rows("current")
    options = SimOptions(limit_cap=limit_cap, seed=9)

    outcome = await crawl_sim(tmp_path, registry, options, crawl={"page_size": 50})

    assert_complete(outcome)
    assert_exact(outcome.rows, truth)
    # Reading every image at the capped page size takes at least this many
    # tag pages; fewer would mean the cap never bit.
    per_image = Counter(row_key(row)[:3] for row in truth)
    least = sum(-(-count // limit_cap) for count in per_image.values())
    assert outcome.sim.requests["GetImageTag"] >= least


@pytest.mark.parametrize("drift", [0.1, 0.3])
async def test_drift_while_paging(tmp_path: Path, drift: float) -> None:
    """Tags are pushed and deleted between pages.  Every tag that existed
    throughout is exported once; nothing that never existed is."""
    registry = SimRegistry(seed=35, total_tags=2_000)
    options = SimOptions(drift=drift, seed=10)

    outcome = await crawl_sim(tmp_path, registry, options)

    assert outcome.sim.drift["push"] > 0
    assert outcome.sim.drift["delete"] > 0
    problems = export_problems(
        outcome.rows, registry.truth_rows("stable"), registry.truth_rows("ever")
    )
    assert not problems, "; ".join(problems)
    # A listing that never stood still may be reported, and nothing else.
    for record in outcome.failures:
        assert record["action"] == "GetImageTag"
        assert record["message"].startswith("the listing kept changing")
    assert outcome.status == (3 if outcome.failures else 0)


# ---------------------------------------------------------------- names, keys

AWKWARD_TAGS = [
    "v1+build",
    "a&b=c",
    "sp ace",
    " lead and trail ",
    "ünï-😀",
    "%2B",
    "x/y/z",
    "=",
    "&",
    "+",
    "?#;",
]
AWKWARD_LAYOUT: dict[str, Any] = {
    "acme": {
        "team+core&x=y": {
            "type": "public",
            "images": {"img name/ü": AWKWARD_TAGS, "a=b&c+d": 45},
        },
        "ünï cödé/repo": {
            "type": "private",
            "images": {"sp ace+plus": ["1", "2"], "100%": ["&x=1"]},
        },
        "plain": {"type": "public", "images": {"x": 3}},
    },
}
PLAIN_KEYS = (DEMO_PUBLIC_KEY, DEMO_PRIVATE_KEY)
AWKWARD_KEYS = ("pub key+/=&ü", "pri/v+ key=&ü😀%2B")


@pytest.mark.parametrize("keys", [PLAIN_KEYS, AWKWARD_KEYS], ids=["plain", "awkward"])
@pytest.mark.parametrize("method", ["get", "form", "json"])
async def test_awkward_names_and_keys(
    tmp_path: Path, method: str, keys: tuple[str, str]
) -> None:
    registry = SimRegistry.from_layout(AWKWARD_LAYOUT)
    public_key, private_key = keys
    options = SimOptions(accounts={public_key: private_key})

    outcome = await crawl_sim(
        tmp_path,
        registry,
        options,
        api={"method": method, "public_key": public_key, "private_key": private_key},
        crawl={"projects": ("acme",), "page_size": 4},  # pages split the names
    )

    assert_complete(outcome)
    assert_exact(outcome.rows, registry.truth_rows("current"))
    assert set(outcome.sim.ret_codes) == {0}


# ---------------------------------------------------------------- refusals


async def test_wrong_private_key_stops_the_crawl(tmp_path: Path) -> None:
    registry = SimRegistry(seed=36, total_tags=500)
    async with SimServer(registry, SimOptions(), host="127.0.0.1") as sim:
        config = fast_config(sim.url, tmp_path, api={"private_key": "not-the-key"})
        with pytest.raises(AuthError) as caught:
            await export(config, resume=False, stats=Stats())

    assert caught.value.ret_code == 171
    assert "not-the-key" not in str(caught.value)
    # Stopped at once: only the first calls (a GetRepo per project and
    # repository type, sent together) were made, and none was retried.
    assert set(sim.stats.ret_codes) == {171}
    assert sim.stats.ret_codes[171] <= len(PROJECTS) * 2
    assert not (tmp_path / "tags.jsonl").exists()
    for path in tmp_path.iterdir():
        assert b"not-the-key" not in path.read_bytes(), path


async def test_unknown_project_beside_a_valid_one(tmp_path: Path) -> None:
    registry = SimRegistry(seed=37, total_tags=1_000)
    truth = [
        row
        for row in registry.truth_rows("current")
        if row["project_id"] == DEFAULT_PROJECT_ID
    ]

    outcome = await crawl_sim(
        tmp_path,
        registry,
        SimOptions(),
        crawl={"projects": (DEFAULT_PROJECT_ID, "no-such-project")},
    )

    assert outcome.status == 3
    assert_exact(outcome.rows, truth)
    assert len(outcome.failures) == 1
    record = outcome.failures[0]
    assert record["ret_code"] == 292
    assert record["params"]["ProjectId"] == "no-such-project"
    assert outcome.stats.failures == 1


# ---------------------------------------------------------------- soak


async def test_mixed_soak(tmp_path: Path) -> None:
    """A tenth of the requests fail in every way, hangs included; tags drift;
    the server rate-limits below the crawl rate; the registry is full size."""
    registry = SimRegistry(seed=38, total_tags=12_000)
    options = SimOptions(
        fault_rate=0.1,
        faults=(*DEFAULT_FAULTS, "hang"),
        drift=0.02,
        rate_limit=150.0,
        seed=11,
    )

    outcome = await crawl_sim(
        tmp_path,
        registry,
        options,
        api={"timeout_s": HANG_TIMEOUT_S},
        crawl={
            "page_size": 100,
            "concurrency": 32,
            "rate_per_s": 300.0,
            # A drifting listing settles only by a pass with no drift in it,
            # and a 3,000-tag image is 30 pages: at 2 % drift a page, four
            # passes leave such an image unsettled in several crawls out of
            # a hundred (exit 3, though every stable tag is exported); eight
            # passes almost never do.
            "max_passes": 8,
        },
    )

    sim = outcome.sim
    assert sum(sim.faults.values()) >= 20
    assert sim.throttled > 0
    assert sim.drift.total() > 0
    problems = export_problems(
        outcome.rows, registry.truth_rows("stable"), registry.truth_rows("ever")
    )
    assert not problems, "; ".join(problems)
    assert_complete(outcome)


# ---------------------------------------------------------------- processes

PROC_SEED = 41
PROC_TAGS = 4_000
PROC_PUBLIC_KEY = "fault-suite-public"
PROC_PRIVATE_KEY = "fault-suite-s3cret-PRIVATE"  # must never show in any output
# Spaced by the client, the crawl takes some seconds: time to kill it midway.
PROC_CRAWL_ARGS = ["--rate", "60", "--page-size", "20", "--concurrency", "4"]


def crawler_command() -> list[str]:
    """The ``crawler`` console script of the interpreter running the tests."""
    script = Path(sys.executable).with_name("crawler")
    return [str(script)] if script.exists() else [sys.executable, "-m", "crawler"]


def child_env() -> dict[str, str]:
    """The test's environment without crawler settings or proxies, so a child
    sees only what the test passes it."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("CRAWLER_") and "proxy" not in name.lower()
    }


@dataclass
class SimProcess:
    url: str
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def sim_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    """``crawler simulate`` on a free loopback port, with some latency."""
    log = tmp_path_factory.mktemp("sim") / "sim.log"
    command = [
        *crawler_command(),
        "simulate",
        *("--host", "127.0.0.1", "--port", "0"),
        *("--seed", str(PROC_SEED), "--tags", str(PROC_TAGS)),
        *("--latency-ms", "20"),
        *("--public-key", PROC_PUBLIC_KEY, "--private-key", PROC_PRIVATE_KEY),
    ]
    with (
        open(log, "wb") as errors,
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=errors,
            stdin=subprocess.DEVNULL,
            env=child_env(),
        ) as process,
    ):
        try:
            assert process.stdout is not None
            banner = process.stdout.readline().decode()
            found = re.search(r"http://127\.0\.0\.1:\d+", banner)
            assert found, f"simulator did not start: {banner!r} {log.read_text()}"
            yield SimProcess(found.group(), process)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def proc_truth() -> list[Row]:
    """The simulator process's registry, rebuilt here from the same seed."""
    return SimRegistry(seed=PROC_SEED, total_tags=PROC_TAGS).truth_rows("current")


def write_config(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


def good_config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "crawler.toml",
        f"""
[api]
public_key = "{PROC_PUBLIC_KEY}"
private_key = "{PROC_PRIVATE_KEY}"
connect_timeout = 2

[crawl]
backoff_base = 0.01
backoff_cap = 0.05
""",
    )


def crawl_args(tmp_path: Path, url: str, *extra: str) -> list[str]:
    return [
        *crawler_command(),
        "crawl",
        *("--config", str(good_config(tmp_path)), "--endpoint", url),
        *("--out", str(tmp_path / "tags.jsonl")),
        *("--errors", str(tmp_path / "errors.jsonl")),
        *("--project", DEFAULT_PROJECT_ID, "--project", SECOND_PROJECT_ID),
        *PROC_CRAWL_ARGS,
        *extra,
    ]


def run_cli(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        cwd=cwd,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
    )


def assert_no_secret(tmp_path: Path, *texts: str, skip: Sequence[Path] = ()) -> None:
    """The private key is in no output and in no file the crawler wrote."""
    for text in texts:
        assert PROC_PRIVATE_KEY not in text
    for path in tmp_path.rglob("*"):
        if path.is_file() and path not in skip:
            assert PROC_PRIVATE_KEY.encode() not in path.read_bytes(), path


def done_images(checkpoint: Path) -> int:
    """How many finished images a checkpoint records (its first line is a
    header)."""
    try:
        lines = checkpoint.read_bytes().splitlines()
    except FileNotFoundError:
        return 0
    return sum(1 for line in lines[1:] if line.startswith(b'{"done"'))


def start_and_stop(
    tmp_path: Path,
    url: str,
    how: signal.Signals,
    moment: tuple[str, float, float],
    *extra: str,
) -> subprocess.CompletedProcess[str]:
    """Start a crawl and wait until its checkpoint records a newly finished
    image (so rows were written); then wait a moment drawn from ``moment``
    (seed, earliest and latest seconds) and send ``how``."""
    args = crawl_args(tmp_path, url, *extra)
    checkpoint = tmp_path / "tags.jsonl.checkpoint"
    finished_before = done_images(checkpoint)
    seed, earliest_s, latest_s = moment
    pause_s = random.Random(seed).uniform(earliest_s, latest_s)
    log_out, log_err = tmp_path / "child.out", tmp_path / "child.err"
    with (
        open(log_out, "wb") as out,
        open(log_err, "wb") as err,
        subprocess.Popen(
            args, cwd=tmp_path, env=child_env(), stdout=out, stderr=err
        ) as process,
    ):
        try:
            give_up = time.monotonic() + 60
            while done_images(checkpoint) <= finished_before:
                assert process.poll() is None, "the crawl ended too soon"
                assert time.monotonic() < give_up, "no image was ever finished"
                time.sleep(0.01)
            time.sleep(pause_s)
            assert process.poll() is None, (
                "the crawl ended before it could be stopped; make it longer"
            )
            process.send_signal(how)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    return subprocess.CompletedProcess(
        args, process.returncode, log_out.read_text(), log_err.read_text()
    )


def resume(tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    result = run_cli(crawl_args(tmp_path, url, "--resume", "-v"), tmp_path)
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr
    # The resumed run kept what the stopped one finished.
    resumed = re.search(r"resuming: (\d+) images", result.stderr)
    assert resumed, result.stderr
    assert int(resumed.group(1)) > 0
    return result


@pytest.mark.parametrize(
    ("moment", "kills"), [(0, 1), (1, 1), (2, 2)], ids=["early", "later", "twice"]
)
def test_kill_9_then_resume(
    tmp_path: Path, sim_proc: SimProcess, proc_truth: list[Row], moment: int, kills: int
) -> None:
    """SIGKILL leaves no chance to clean up; ``--resume`` must still end with
    every row exactly once.  ``twice`` kills the resumed run as well."""
    for kill in range(kills):
        extra = ("--resume",) if kill else ()
        # Each moment starts 0.4 s later into the crawl than the one before;
        # a resumed run has less left to do, so it is killed early.
        earliest_s = 0.4 * moment if kill == 0 else 0.0
        when = (f"kill-{moment}-{kill}", earliest_s, earliest_s + 0.4)
        killed = start_and_stop(tmp_path, sim_proc.url, signal.SIGKILL, when, *extra)
        assert killed.returncode == -signal.SIGKILL
        assert (tmp_path / "tags.jsonl.part").exists()
        assert done_images(tmp_path / "tags.jsonl.checkpoint") > 0

    result = resume(tmp_path, sim_proc.url)

    assert_exact(read_jsonl(tmp_path / "tags.jsonl"), proc_truth)
    assert read_jsonl(tmp_path / "errors.jsonl") == []
    assert not (tmp_path / "tags.jsonl.part").exists()
    assert not (tmp_path / "tags.jsonl.checkpoint").exists()
    assert_no_secret(
        tmp_path, result.stdout, result.stderr, skip=[tmp_path / "crawler.toml"]
    )


@pytest.mark.parametrize(
    ("how", "status"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
    ids=["SIGINT", "SIGTERM"],
)
def test_interrupt_then_resume(
    tmp_path: Path,
    sim_proc: SimProcess,
    proc_truth: list[Row],
    how: signal.Signals,
    status: int,
) -> None:
    when = (f"stop-{how.name}", 0.0, 0.8)
    stopped = start_and_stop(tmp_path, sim_proc.url, how, when)

    assert stopped.returncode == status
    assert "Traceback" not in stopped.stderr
    assert f"stopped by {how.name}" in stopped.stderr
    assert (tmp_path / "tags.jsonl.part").exists()
    assert done_images(tmp_path / "tags.jsonl.checkpoint") > 0

    resume(tmp_path, sim_proc.url)

    assert_exact(read_jsonl(tmp_path / "tags.jsonl"), proc_truth)
    assert not (tmp_path / "tags.jsonl.checkpoint").exists()


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], status: int, *names: str
) -> str:
    """The command failed with ``status`` and one stderr line naming ``names``."""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("crawler: error: "), lines[0]
    for name in names:
        assert name in lines[0]
    assert result.returncode == status, result.stderr
    return lines[0]


def test_wrong_private_key_at_the_cli(tmp_path: Path, sim_proc: SimProcess) -> None:
    wrong_key = "wrong-s3cret-PRIVATE-key"
    config = write_config(
        tmp_path / "wrong.toml",
        f'[api]\npublic_key = "{PROC_PUBLIC_KEY}"\nprivate_key = "{wrong_key}"\n',
    )
    args = crawl_args(tmp_path, sim_proc.url, "--config", str(config))

    result = run_cli(args, tmp_path)

    assert_one_line_error(result, 1, "171")
    for path in tmp_path.rglob("*"):
        if path.is_file() and path != config:
            assert wrong_key.encode() not in path.read_bytes(), path
    assert wrong_key not in result.stdout + result.stderr
    assert not (tmp_path / "tags.jsonl").exists()


def test_unknown_project_at_the_cli(
    tmp_path: Path, sim_proc: SimProcess, proc_truth: list[Row]
) -> None:
    args = [
        *crawler_command(),
        "crawl",
        *("--config", str(good_config(tmp_path)), "--endpoint", sim_proc.url),
        *("--out", str(tmp_path / "tags.jsonl")),
        *("--errors", str(tmp_path / "errors.jsonl")),
        *("--project", DEFAULT_PROJECT_ID, "--project", "no-such-project"),
        *("--page-size", "100", "--rate", "0"),
    ]

    result = run_cli(args, tmp_path)

    assert "Traceback" not in result.stderr
    assert result.returncode == 3, result.stderr
    truth = [row for row in proc_truth if row["project_id"] == DEFAULT_PROJECT_ID]
    assert_exact(read_jsonl(tmp_path / "tags.jsonl"), truth)
    [record] = read_jsonl(tmp_path / "errors.jsonl")
    assert record["ret_code"] == 292
    assert record["params"]["ProjectId"] == "no-such-project"
    assert_no_secret(
        tmp_path, result.stdout, result.stderr, skip=[tmp_path / "crawler.toml"]
    )


KEYS = f'public_key = "{PROC_PUBLIC_KEY}"\nprivate_key = "{PROC_PRIVATE_KEY}"\n'


def keyed(rest: str) -> str:
    """A config file with both keys right, then ``rest``."""
    return f"[api]\n{KEYS}{rest}"


# id, config file, what its one-line error must name
BAD_CONFIGS: list[tuple[str, str, list[str]]] = [
    (
        "misspelled-key",
        keyed("[crawl]\npage_sise = 10\n"),
        ["crawl.page_sise", "'page_size'"],
    ),
    ("unknown-section", keyed("[crawll]\npage_size = 10\n"), ["crawll"]),
    (
        "string-for-integer",
        keyed('[crawl]\npage_size = "ten"\n'),
        ["crawl.page_size", "integer"],
    ),
    (
        "string-for-list",
        keyed('[crawl]\nprojects = "org-default"\n'),
        ["crawl.projects", "list"],
    ),
    ("bool-for-rate", keyed("[crawl]\nrate = true\n"), ["crawl.rate"]),
    ("zero-page", keyed("[crawl]\npage_size = 0\n"), ["crawl.page_size"]),
    ("negative-page", keyed("[crawl]\npage_size = -5\n"), ["crawl.page_size"]),
    ("zero-concurrency", keyed("[crawl]\nconcurrency = 0\n"), ["crawl.concurrency"]),
    (
        "negative-concurrency",
        keyed("[crawl]\nconcurrency = -3\n"),
        ["crawl.concurrency"],
    ),
    (
        "endpoint-without-host",
        keyed('endpoint = "http:///no-host"\n'),
        ["api.endpoint", "http:///no-host"],
    ),
    (
        "missing-private-key",
        f'[api]\npublic_key = "{PROC_PUBLIC_KEY}"\n',
        ["api.private_key"],
    ),
    ("no-keys", "[crawl]\npage_size = 10\n", ["api.public_key"]),
    ("broken-toml", keyed("[crawl\n"), ["not valid TOML"]),
    (
        "number-for-private-key",
        f'[api]\npublic_key = "{PROC_PUBLIC_KEY}"\nprivate_key = 918273645\n',
        ["api.private_key"],
    ),
]


@pytest.mark.parametrize(
    ("config", "names"),
    [pytest.param(config, names, id=name) for name, config, names in BAD_CONFIGS],
)
def test_bad_config_file(
    tmp_path: Path, sim_proc: SimProcess, config: str, names: list[str]
) -> None:
    path = write_config(tmp_path / "bad.toml", config)
    args = crawl_args(tmp_path, sim_proc.url, "--config", str(path))

    result = run_cli(args, tmp_path)

    assert_one_line_error(result, 1, *names)
    assert_no_secret(
        tmp_path, result.stdout, result.stderr, skip=[path, tmp_path / "crawler.toml"]
    )
    # The value of a mistyped private key is a secret too.
    assert "918273645" not in result.stderr
    assert not (tmp_path / "tags.jsonl").exists()


@pytest.mark.parametrize(
    "template",
    [
        "htp://127.0.0.1:{port}",
        "http://127.0.0.1:notaport",
        "127.0.0.1:{port}",
        "http://127.0.0.1:{port}/?x=1",
        "",
    ],
)
def test_malformed_endpoint(
    tmp_path: Path, sim_proc: SimProcess, template: str
) -> None:
    # Built on the simulator's own port: were one accepted by mistake, the
    # crawl would still reach nothing but the test's own server.
    port = sim_proc.url.rsplit(":", 1)[1]
    args = crawl_args(tmp_path, template.format(port=port))

    result = run_cli(args, tmp_path)

    assert_one_line_error(result, 1, "api.endpoint")
    assert_no_secret(
        tmp_path, result.stdout, result.stderr, skip=[tmp_path / "crawler.toml"]
    )


def test_missing_config_file(tmp_path: Path, sim_proc: SimProcess) -> None:
    missing = tmp_path / "nowhere" / "crawler.toml"
    args = crawl_args(tmp_path, sim_proc.url, "--config", str(missing))

    result = run_cli(args, tmp_path)

    assert_one_line_error(result, 1, str(missing), "does not exist")


def test_unreadable_config_file(tmp_path: Path, sim_proc: SimProcess) -> None:
    directory = tmp_path / "a-directory.toml"
    directory.mkdir()
    args = crawl_args(tmp_path, sim_proc.url, "--config", str(directory))

    result = run_cli(args, tmp_path)

    assert_one_line_error(result, 1, str(directory))


def _in_missing_dir(tmp_path: Path) -> Path:
    return tmp_path / "no-such-dir" / "tags.jsonl"


def _under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("")
    return tmp_path / "a-file" / "tags.jsonl"


def _in_read_only_dir(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root may write into a read-only directory")
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o500)
    return directory / "tags.jsonl"


@pytest.mark.parametrize("option", ["--out", "--errors"])
@pytest.mark.parametrize(
    "where",
    [_in_missing_dir, _under_a_file, _in_read_only_dir],
    ids=["missing-dir", "under-a-file", "read-only-dir"],
)
def test_unwritable_output(
    tmp_path: Path,
    sim_proc: SimProcess,
    option: str,
    where: Callable[[Path], Path],
) -> None:
    target = where(tmp_path)
    args = crawl_args(tmp_path, sim_proc.url, option, str(target))

    result = run_cli(args, tmp_path)

    assert_one_line_error(result, 1, str(target))
    assert_no_secret(
        tmp_path, result.stdout, result.stderr, skip=[tmp_path / "crawler.toml"]
    )


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--page-size", "0"),
        ("--page-size", "-5"),
        ("--concurrency", "0"),
        ("--concurrency", "-1"),
        ("--rate", "-1"),
    ],
)
def test_bad_option_values(
    tmp_path: Path, sim_proc: SimProcess, option: str, value: str
) -> None:
    """A bad option value is a usage error: argparse's exit status 2, with the
    usage line and one line naming the option."""
    args = crawl_args(tmp_path, sim_proc.url, f"{option}={value}")

    result = run_cli(args, tmp_path)

    assert "Traceback" not in result.stderr
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert option in last
    assert repr(value) in last
    assert PROC_PRIVATE_KEY not in result.stderr
