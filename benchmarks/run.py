"""Benchmarks of the crawler against the embedded registry simulator.

    python benchmarks/run.py [--quick] [--only NAME[,NAME...]] [--profile]

Measurements: cpu, memory, rate, latency, sequential (README.md says what each
one measures and why).  The simulator and every measured client run in their
own processes on 127.0.0.1.  The run prints a table of figures, each beside
its target with a met/missed mark; it never fails on a missed target, and
exits non-zero only when a measurement could not run at all.
"""

from __future__ import annotations

import argparse
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from _procs import (
    BenchError,
    ChildResult,
    CrawlSettings,
    Simulator,
    run_bare,
    run_child,
    run_crawler,
    run_sequential,
    summary_line,
)
from _registry import ideal_requests, registry_for_requests
from _sim_launcher import SINGLE_REPO

import crawler
from crawler._simulator import DEFAULT_PROJECT_ID, SECOND_PROJECT_ID, SimRegistry

SEED = 1
PROJECTS = (DEFAULT_PROJECT_ID, SECOND_PROJECT_ID)
CONCURRENCY = 64  # the crawler's default; the bare loop gets as many connections
PAGE_SIZE = 100
RATE_PER_S = 200.0
RATE_LATENCY_MS = 50.0
SINGLE_IMAGE_TAGS = 5_000
SINGLE_IMAGE_LATENCY_MS = 100.0
SEQUENTIAL_LATENCY_MS = 20.0
SIMULATOR_START_S = 300.0  # building and pre-generating a million tags is slow
CHILD_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each measurement is; ``--quick`` shrinks them all."""

    cpu_tags: int
    cpu_rounds: int  # crawler and bare loop alternate this many times
    memory_tags: tuple[int, int]
    rate_duration_s: float  # the ideal length of the rate-limited crawl
    sequential_tags: int
    repeats: int  # short crawls (latency, sequential) run this often; median


FULL = Sizes(1_000_000, 3, (100_000, 1_000_000), 20.0, 20_000, 5)
QUICK = Sizes(100_000, 1, (10_000, 100_000), 6.0, 5_000, 5)


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table; ``met`` is None for a figure with no target."""

    label: str
    figure: str
    target: str = ""
    met: bool | None = None


@dataclass(slots=True)
class Crawl:
    """One measured client run and what the simulator counted during it."""

    result: ChildResult
    requests: int  # answers the simulator sent, throttling answers included
    throttled: int


@dataclass(slots=True)
class Bench:
    """What the measurements share: sizes, a scratch directory, the simulator.

    One simulator runs at a time: asking for one with other options stops the
    previous one, and asking again with the same options reuses it (the
    million-tag registry is built once for both cpu and memory).
    """

    sizes: Sizes
    workdir: Path
    profile: bool
    notes: list[str] = field(default_factory=list)  # printed after the table
    _sim: Simulator | None = None

    def simulator(self, *options: str) -> Simulator:
        wanted = [*options, "--seed", str(SEED), "--pregenerate"]
        if self._sim is not None and self._sim.options == wanted:
            return self._sim
        self.close()
        log(f"starting the simulator: {' '.join(options)}")
        self._sim = Simulator(wanted, self.workdir)
        try:
            return self._sim.start(SIMULATOR_START_S)
        except BaseException:
            self.close()  # not kept for reuse, and stopped however far it got
            raise

    def close(self) -> None:
        if self._sim is not None:
            self._sim.close()
            self._sim = None

    def measured(self, sim: Simulator, run: Callable[[], ChildResult]) -> Crawl:
        """Run one client against ``sim`` with fresh simulator counters."""
        sim.reset_stats()
        result = run()
        stats = sim.stats()
        requests = sum(stats["requests"].values())
        return Crawl(result, requests, int(stats["throttled"]))

    def crawl(
        self, sim: Simulator, settings: CrawlSettings, profile: Path | None = None
    ) -> Crawl:
        def run() -> ChildResult:
            return run_crawler(sim, settings, self.workdir, CHILD_TIMEOUT_S, profile)

        return self.measured(sim, run)


def log(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def _describe(name: str, crawl: Crawl) -> str:
    result = crawl.result
    text = (
        f"{name}: {crawl.requests:,} pages, work {result.work_cpu_s:.2f} s CPU "
        f"in {result.work_wall_s:.2f} s; process {result.cpu_s:.2f} s CPU, "
        f"peak RSS {result.peak_rss_mb:.0f} MB"
    )
    if "tags" in result.report:
        return f"{text}; {result.report['tags']:,} tags"
    return f"{text}\n    {summary_line(result.stderr)}"


def _mark(row: Row) -> str:
    if row.met is None:
        return ""
    return "met" if row.met else "MISSED"


# ---------------------------------------------------------------- measurements


def _alternate(
    bench: Bench, sim: Simulator, settings: CrawlSettings
) -> tuple[list[Crawl], list[Crawl], list[Crawl]]:
    """Crawl with the crawler, the bare loop and the bare loop writing the
    export in turn, ``cpu_rounds`` times each, so that a burst of load from
    elsewhere hits every side."""

    def bare(export: Path | None) -> Callable[[], ChildResult]:
        return lambda: run_bare(
            sim, PROJECTS, CONCURRENCY, bench.workdir, CHILD_TIMEOUT_S, export
        )

    crawls: list[Crawl] = []
    bares: list[Crawl] = []
    writers: list[Crawl] = []
    for _ in range(bench.sizes.cpu_rounds):
        crawls.append(bench.crawl(sim, settings))
        log(_describe("crawler", crawls[-1]))
        bares.append(bench.measured(sim, bare(None)))
        log(_describe("bare loop", bares[-1]))
        writers.append(bench.measured(sim, bare(bench.workdir / "bare.jsonl")))
        log(_describe("bare loop writing the export", writers[-1]))
    return crawls, bares, writers


def _us_per_page(runs: list[Crawl]) -> float:
    return min(run.result.work_cpu_s / run.requests for run in runs) * 1e6


def measure_cpu(bench: Bench) -> list[Row]:
    """CPU per page: the crawler against a bare aiohttp loop, same pages."""
    tags = bench.sizes.cpu_tags
    sim = bench.simulator("--tags", str(tags))
    settings = CrawlSettings(concurrency=CONCURRENCY, projects=PROJECTS)
    crawls, bares, writers = _alternate(bench, sim, settings)
    ideal = ideal_requests(SimRegistry(SEED, tags), PAGE_SIZE)
    pages = {crawl.requests for crawl in crawls + bares + writers}
    if pages != {ideal}:
        bench.notes.append(f"cpu: pages per run {sorted(pages)}, ideal {ideal:,}")
    crawler_us, bare_us = _us_per_page(crawls), _us_per_page(bares)
    writer_us = _us_per_page(writers)
    ratio = crawler_us / bare_us
    whole = min(c.result.cpu_s / c.requests for c in crawls) / min(
        b.result.cpu_s / b.requests for b in bares
    )
    bench.notes.append(
        f"cpu: with interpreter start-up and imports counted, the ratio is "
        f"{whole:.2f}x; the table counts the work only."
    )
    if bench.profile:
        _profile(bench, sim, settings)
    return [
        Row(
            f"CPU per page, crawler ({tags:,} tags, {CONCURRENCY} connections)",
            f"{crawler_us:.0f} us ({crawls[0].requests:,} pages)",
        ),
        Row(
            "CPU per page, bare aiohttp loop",
            f"{bare_us:.0f} us ({bares[0].requests:,} pages)",
        ),
        Row(
            "CPU per page, crawler / bare loop",
            f"{ratio:.2f}x",
            "<= 1.25x",
            ratio <= 1.25,
        ),
        Row(
            "CPU per page, bare loop writing the same export",
            f"{writer_us:.0f} us",
        ),
        Row("CPU per page, crawler / that loop", f"{crawler_us / writer_us:.2f}x"),
    ]


def _profile(bench: Bench, sim: Simulator, settings: CrawlSettings) -> None:
    """Crawl once more under cProfile; note the top functions by own time."""
    path = bench.workdir / "crawl.prof"
    crawl = bench.crawl(sim, settings, profile=path)
    log(_describe("crawler under cProfile", crawl))
    entries = [
        (own_s, calls, f"{Path(file).name}:{line} {func}", file)
        for (file, line, func), (_, calls, own_s, _, _) in pstats.Stats(
            str(path)
        ).stats.items()  # type: ignore[attr-defined]
    ]
    entries.sort(reverse=True)
    total_s = sum(entry[0] for entry in entries)
    package = str(Path(crawler.__file__).parent)
    ours = [entry for entry in entries if entry[3].startswith(package)]
    lines = [f"profile: {total_s:.2f} s of own time under cProfile"]
    for title, chosen in (("in crawler/", ours[:15]), ("overall", entries[:15])):
        lines.append(f"  top functions by own time, {title}:")
        for own_s, calls, where, _ in chosen:
            share = own_s / total_s
            lines.append(f"    {own_s:7.3f} s {share:6.1%} {calls:>9,} calls  {where}")
    share_ours = sum(entry[0] for entry in ours) / total_s
    lines.append(f"  crawler/ code holds {share_ours:.1%} of the own time")
    bench.notes.append("\n".join(lines))


def measure_memory(bench: Bench) -> list[Row]:
    """Peak RSS of the crawler process exporting a small and a large registry."""
    small, big = bench.sizes.memory_tags
    settings = CrawlSettings(concurrency=CONCURRENCY, projects=PROJECTS)
    peak_mb: dict[int, float] = {}
    for tags in (big, small):  # big first: cpu may have left its simulator up
        crawl = bench.crawl(bench.simulator("--tags", str(tags)), settings)
        log(_describe(f"crawler, {tags:,} tags", crawl))
        peak_mb[tags] = crawl.result.peak_rss_mb
    imports_only = [sys.executable, str(Path(__file__).parent / "_child.py")]
    imports = run_child(imports_only, bench.workdir, 60.0)
    ratio = peak_mb[big] / peak_mb[small]
    big_mb = peak_mb[big]
    return [
        Row(f"peak RSS, {small:,} tags", f"{peak_mb[small]:.1f} MB"),
        Row(f"peak RSS, {big:,} tags", f"{big_mb:.1f} MB", "< 100 MB", big_mb < 100),
        Row(f"peak RSS, {big:,} / {small:,}", f"{ratio:.2f}x", "<= 1.2x", ratio <= 1.2),
        Row("peak RSS, interpreter and imports only", f"{imports.peak_rss_mb:.1f} MB"),
    ]


def measure_rate(bench: Bench) -> list[Row]:
    """Rate utilisation, throttling and whole-registry wall time at 200/s."""
    min_requests = round(RATE_PER_S * bench.sizes.rate_duration_s)
    tags, ideal = registry_for_requests(SEED, min_requests, PAGE_SIZE)
    ideal_s = ideal / RATE_PER_S
    settings = CrawlSettings(
        rate_per_s=RATE_PER_S, concurrency=CONCURRENCY, projects=PROJECTS
    )
    options = ("--tags", str(tags), "--latency-ms", f"{RATE_LATENCY_MS:g}")
    free = bench.crawl(bench.simulator(*options), settings)
    log(_describe("crawler, server without limit", free))
    strict_sim = bench.simulator(*options, "--rate-limit", f"{RATE_PER_S:g}")
    strict = bench.crawl(strict_sim, settings)
    log(_describe("crawler, server limit", strict))
    if free.requests != ideal:
        bench.notes.append(f"rate: {free.requests:,} requests, ideal {ideal:,}")

    wall_s = free.result.work_wall_s
    utilisation = free.requests / wall_s / RATE_PER_S
    accepted = strict.requests - strict.throttled
    strict_utilisation = accepted / strict.result.work_wall_s / RATE_PER_S
    throttled_share = strict.throttled / strict.requests
    wall_ratio = wall_s / ideal_s
    where = f"{RATE_PER_S:g}/s, {RATE_LATENCY_MS:g} ms, {tags:,} tags"
    return [
        Row(
            f"rate utilisation ({where})",
            f"{utilisation:.3f} ({free.requests / wall_s:.1f}/s over {wall_s:.1f} s)",
            ">= 0.97",
            utilisation >= 0.97,
        ),
        Row(
            f"throttling answers, server limit {RATE_PER_S:g}/s",
            f"{throttled_share:.2%} ({strict.throttled:,} of {strict.requests:,})",
            "<= 1%",
            throttled_share <= 0.01,
        ),
        Row("rate utilisation under that limit", f"{strict_utilisation:.3f}"),
        Row(
            f"whole-registry wall / ideal ({ideal:,} requests at {RATE_PER_S:g}/s)",
            f"{wall_ratio:.3f}x ({wall_s:.2f} s vs {ideal_s:.2f} s)",
            "<= 1.05x",
            wall_ratio <= 1.05,
        ),
    ]


def _median_crawl(
    bench: Bench, sim: Simulator, settings: CrawlSettings, name: str
) -> Crawl:
    """Crawl a few times; return the crawl of median wall time."""
    crawls = []
    for _ in range(bench.sizes.repeats):
        crawls.append(bench.crawl(sim, settings))
        log(_describe(name, crawls[-1]))
    crawls.sort(key=lambda crawl: crawl.result.work_wall_s)
    return crawls[len(crawls) // 2]


def _jitter_note() -> str:
    """The two-round-trip ideal under the simulator's latency jitter.

    Each answer is delayed by the mean latency times a uniform draw from 0.5
    to 1.5, so a wave of m concurrent pages lasts the longest of m draws, whose
    expectation is 0.5 + m / (m + 1) mean latencies.
    """
    rest = -(-SINGLE_IMAGE_TAGS // PAGE_SIZE) - 1
    ideal_rt = 1.0 + 0.5 + rest / (rest + 1)
    return (
        f"latency: the simulator jitters each delay by +-50%, so even a client "
        f"that sends all {rest} remaining pages at once expects "
        f"{ideal_rt:.2f} mean round trips, not 2."
    )


def measure_latency(bench: Bench) -> list[Row]:
    """One image of 5,000 tags at 100 ms: wall time in round trips."""
    sim = bench.simulator(
        "--single-image",
        str(SINGLE_IMAGE_TAGS),
        "--latency-ms",
        f"{SINGLE_IMAGE_LATENCY_MS:g}",
    )
    round_trip_s = SINGLE_IMAGE_LATENCY_MS / 1000
    bench.notes.append(_jitter_note())
    one_page = CrawlSettings(images=(f"{SINGLE_REPO}/small",))
    one_s = _median_crawl(bench, sim, one_page, "one page").result.work_wall_s
    rows = [
        Row(
            "one page at 100 ms (ideal: 1 round trip)",
            f"{one_s / round_trip_s:.2f} RT ({one_s * 1000:.0f} ms)",
        )
    ]
    for concurrency in (32, CONCURRENCY):
        settings = CrawlSettings(
            concurrency=concurrency,
            page_size=PAGE_SIZE,
            images=(f"{SINGLE_REPO}/big",),
        )
        name = f"{SINGLE_IMAGE_TAGS:,} tags, concurrency {concurrency}"
        wall_s = _median_crawl(bench, sim, settings, name).result.work_wall_s
        round_trips = wall_s / round_trip_s
        default = concurrency == CONCURRENCY
        rows.append(
            Row(
                f"{SINGLE_IMAGE_TAGS:,} tags at 100 ms, concurrency {concurrency}"
                + (" (default)" if default else ""),
                f"{round_trips:.2f} RT ({wall_s * 1000:.0f} ms)",
                "<= 3 RT" if default else "",
                round_trips <= 3 if default else None,
            )
        )
    return rows


def _concurrency_bound_note(per_call_ms: float) -> str:
    bound = CONCURRENCY * per_call_ms / SEQUENTIAL_LATENCY_MS
    latency = f"{SEQUENTIAL_LATENCY_MS:g}"
    return (
        f"sequential: with {CONCURRENCY} requests in flight, each taking at least "
        f"the {latency} ms latency, the speed-up cannot pass "
        f"{CONCURRENCY} x {per_call_ms:.1f} / {latency} = {bound:.0f}x, and the "
        "repository -> image -> tag chain adds round trips no concurrency hides."
    )


def measure_sequential(bench: Bench) -> list[Row]:
    """The crawler against one-request-at-a-time urllib, at 20 ms."""
    tags = bench.sizes.sequential_tags
    latency = f"{SEQUENTIAL_LATENCY_MS:g}"
    sim = bench.simulator("--tags", str(tags), "--latency-ms", latency)

    def sequential() -> ChildResult:
        return run_sequential(sim, PROJECTS, bench.workdir, CHILD_TIMEOUT_S)

    slow = bench.measured(sim, sequential)
    log(_describe("sequential loop", slow))
    settings = CrawlSettings(concurrency=CONCURRENCY, projects=PROJECTS)
    fast = _median_crawl(bench, sim, settings, "crawler")
    settings = CrawlSettings(concurrency=128, projects=PROJECTS)
    wide = _median_crawl(bench, sim, settings, "crawler, concurrency 128")
    if not slow.requests == fast.requests == wide.requests:
        bench.notes.append(
            f"sequential: requests differ: sequential {slow.requests:,}, "
            f"crawler {fast.requests:,} and {wide.requests:,}"
        )
    slow_s = slow.result.work_wall_s
    speedup = slow_s / fast.result.work_wall_s
    wide_speedup = slow_s / wide.result.work_wall_s
    per_call_ms = slow_s / slow.requests * 1000
    bench.notes.append(_concurrency_bound_note(per_call_ms))
    return [
        Row(
            f"sequential loop ({tags:,} tags, {slow.requests:,} calls, {latency} ms)",
            f"{slow_s:.2f} s ({per_call_ms:.1f} ms per call)",
        ),
        Row(
            f"speed-up of the crawler, concurrency {CONCURRENCY} (default)",
            f"{speedup:.1f}x ({fast.result.work_wall_s:.2f} s)",
            ">= 50x",
            speedup >= 50,
        ),
        Row(
            "speed-up of the crawler, concurrency 128",
            f"{wide_speedup:.1f}x ({wide.result.work_wall_s:.2f} s)",
        ),
    ]


MEASUREMENTS: dict[str, Callable[[Bench], list[Row]]] = {
    "cpu": measure_cpu,
    "memory": measure_memory,
    "rate": measure_rate,
    "latency": measure_latency,
    "sequential": measure_sequential,
}


# ---------------------------------------------------------------- report


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _revision() -> str:
    """The crawler's git revision, marked dirty when the tree has changes."""
    repo = Path(crawler.__file__).resolve().parent.parent
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def machine() -> str:
    usable = len(os.sched_getaffinity(0))
    return (
        f"machine: {_cpu_model()}, {os.cpu_count()} cores ({usable} usable); "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"orjson {orjson.__version__}; crawler {_revision()}"
    )


def print_table(header: str, rows: dict[str, list[Row]], broken: list[str]) -> None:
    flat = [row for group in rows.values() for row in group]
    label_w = max([len("measurement"), *(len(row.label) for row in flat)])
    figure_w = max([len("figure"), *(len(row.figure) for row in flat)])
    target_w = max([len("target"), *(len(row.target) for row in flat)])
    print(header)
    titles = (("measurement", label_w), ("figure", figure_w), ("target", target_w))
    line = "  ".join(f"{title:<{width}}" for title, width in titles)
    print(line + "  mark")
    print("-" * (len(line) + 8))
    for name, group in rows.items():
        print(f"[{name}]")
        for row in group:
            print(
                f"{row.label:<{label_w}}  {row.figure:<{figure_w}}  "
                f"{row.target:<{target_w}}  {_mark(row)}".rstrip()
            )
    for problem in broken:
        print(f"[broken] {problem}")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the crawler against the registry simulator."
    )
    parser.add_argument("--quick", action="store_true", help="smaller, shorter runs")
    parser.add_argument(
        "--only",
        metavar="NAME[,NAME...]",
        help=f"run only these measurements, from {', '.join(MEASUREMENTS)}",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="with cpu: crawl once more under cProfile and list the hot spots",
    )
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(MEASUREMENTS)
    unknown = [name for name in names if name not in MEASUREMENTS]
    if unknown:
        choices = ", ".join(MEASUREMENTS)
        parser.error(f"unknown measurement {unknown[0]!r}; choose from {choices}")
    args.names = [name for name in MEASUREMENTS if name in names]
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    header = machine()
    load_before = load_average()
    workdir = Path(tempfile.mkdtemp(prefix="crawler-bench-"))
    bench = Bench(QUICK if args.quick else FULL, workdir, args.profile)
    rows: dict[str, list[Row]] = {}
    broken: list[str] = []
    started_s = time.perf_counter()
    try:
        for name in args.names:
            print(f"{name}:", file=sys.stderr, flush=True)
            try:
                rows[name] = MEASUREMENTS[name](bench)
            except BenchError as exc:
                broken.append(f"{name}: {exc}")
    finally:
        bench.close()
        shutil.rmtree(workdir, ignore_errors=True)
    mode = "quick" if args.quick else "full"
    elapsed_s = time.perf_counter() - started_s
    run = (
        f"{mode} run, {elapsed_s:.0f} s; load average {load_before} before, "
        f"{load_average()} after"
    )
    print_table(f"{header}\n{run}", rows, broken)
    for note in bench.notes:
        print(note)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
