"""Child processes of the benchmark: the simulator and the measured clients.

Every process here is started by the benchmark, talks only to 127.0.0.1, and
is bounded in time: a child past its deadline is killed and the measurement
reported as broken.
"""

from __future__ import annotations

import itertools
import os
import re
import select
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import orjson
from _child import REPORT_ENV

from crawler._simulator import DEMO_PRIVATE_KEY, DEMO_PUBLIC_KEY

__all__ = [
    "BenchError",
    "ChildResult",
    "CrawlSettings",
    "Simulator",
    "run_bare",
    "run_child",
    "run_crawler",
    "run_sequential",
    "summary_line",
]

HERE = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"
_POLL_S = 0.01  # how often a running child is checked for exit
_HTTP_TIMEOUT_S = 10.0
_BANNER = re.compile(rb"registry simulator on (http://127\.0\.0\.1:\d+):")
# Straight to the loopback server, whatever proxy the environment names.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_serial = itertools.count(1)


class BenchError(Exception):
    """A benchmark step could not run; the message says which and why."""


@dataclass(frozen=True, slots=True)
class ChildResult:
    """One finished child: the kernel's view (``os.wait4``) and its own report.

    ``cpu_s`` and ``wall_s`` cover the whole process, start-up included;
    ``report`` holds the child's figures for its work alone (``work_cpu_s``,
    ``work_wall_s``), its peak RSS and what it counted (see ``_child``).
    """

    status: int
    cpu_s: float
    wall_s: float
    report: dict[str, Any]
    stderr: str

    @property
    def peak_rss_mb(self) -> float:
        return float(self.report["peak_rss_mb"])

    @property
    def work_cpu_s(self) -> float:
        return float(self.report["work_cpu_s"])

    @property
    def work_wall_s(self) -> float:
        return float(self.report["work_wall_s"])


def _check_loopback(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname != LOOPBACK:
        raise BenchError(f"refusing to aim traffic at {url!r}: not {LOOPBACK}")
    return url


def _child_env() -> dict[str, str]:
    """The environment minus anything that could point the crawler elsewhere
    (``CRAWLER_ENDPOINT`` and friends)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CRAWLER_")}


def run_child(
    argv: list[str],
    workdir: Path,
    timeout_s: float,
    env: dict[str, str] | None = None,
) -> ChildResult:
    """Run ``argv`` to completion; read its CPU time and its report (see
    ``_child``)."""
    serial = next(_serial)
    report_path = workdir / f"report-{serial}.json"
    stderr_path = workdir / f"stderr-{serial}.txt"
    child_env = {**_child_env(), **(env or {}), REPORT_ENV: str(report_path)}
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=stderr, env=child_env, cwd=workdir
        )
    started_s = time.perf_counter()
    status, usage = _wait(proc, started_s + timeout_s, argv)
    wall_s = time.perf_counter() - started_s
    stderr_text = stderr_path.read_text(errors="replace")
    if not report_path.exists():
        raise BenchError(
            f"{Path(argv[1]).name} exited with status {status} and no report; "
            f"its last words: {stderr_text[-400:]!r}"
        )
    return ChildResult(
        status=status,
        cpu_s=usage.ru_utime + usage.ru_stime,
        wall_s=wall_s,
        report=orjson.loads(report_path.read_bytes()),
        stderr=stderr_text,
    )


def _wait(
    proc: subprocess.Popen[bytes], deadline_s: float, argv: list[str]
) -> tuple[int, Any]:
    """Reap ``proc`` with its rusage; kill it at the deadline.

    Only the CPU times of that rusage are used: its ``ru_maxrss`` includes
    this process's own peak (see ``_child``).
    """
    try:
        while True:
            pid, wait_status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(wait_status)
                return proc.returncode, usage
            if time.perf_counter() > deadline_s:
                raise BenchError(f"{' '.join(argv[1:4])} ... ran past its deadline")
            time.sleep(_POLL_S)
    except BaseException:  # the deadline, or the benchmark interrupted
        if proc.returncode is None:
            proc.kill()
            os.wait4(proc.pid, 0)
            proc.returncode = -9
        raise


class Simulator:
    """The registry simulator in its own process, on a free loopback port.

    ``options`` are ``crawler simulate`` options (see ``_sim_launcher``).  The
    port is chosen by the kernel (``--port 0``) and read back from the
    simulator's start-up line, so no other process's server can be mistaken
    for ours.
    """

    def __init__(self, options: list[str], workdir: Path) -> None:
        self.options = options
        self.url = ""
        self._stderr_path = workdir / f"simulator-{next(_serial)}.txt"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float) -> Simulator:
        launcher = str(HERE / "_sim_launcher.py")
        argv = [sys.executable, launcher, "--host", LOOPBACK, "--port", "0"]
        with open(self._stderr_path, "wb") as stderr:
            self._proc = subprocess.Popen(
                [*argv, *self.options],
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=_child_env(),
            )
        assert self._proc.stdout is not None
        line = _read_line(self._proc.stdout, time.monotonic() + timeout_s)
        match = _BANNER.search(line)
        if match is None:
            self.close()
            tail = self._stderr_path.read_text(errors="replace")[-400:]
            raise BenchError(f"the simulator did not start: {line!r} {tail!r}")
        self.url = _check_loopback(match.group(1).decode())
        return self

    def stats(self) -> dict[str, Any]:
        """The simulator's counters since the last ``reset_stats``."""
        return self._call("GET", "/_sim/stats")

    def reset_stats(self) -> None:
        self._call("POST", "/_sim/reset-stats")

    def _call(self, method: str, path: str) -> dict[str, Any]:
        if self._proc is None or self._proc.poll() is not None:
            raise BenchError(f"the simulator at {self.url} is not running")
        url = _check_loopback(self.url + path)
        request = urllib.request.Request(url, method=method)
        try:
            with _OPENER.open(request, timeout=_HTTP_TIMEOUT_S) as response:
                doc: dict[str, Any] = orjson.loads(response.read())
        except OSError as exc:
            raise BenchError(f"the simulator did not answer {url}: {exc}") from exc
        return doc

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _read_line(stream: IO[bytes], deadline_s: float) -> bytes:
    """One line from ``stream``, or b"" if none comes by the deadline."""
    remaining_s = deadline_s - time.monotonic()
    readable, _, _ = select.select([stream], [], [], max(0.0, remaining_s))
    return stream.readline() if readable else b""


# ---------------------------------------------------------------- clients


@dataclass(frozen=True, slots=True)
class CrawlSettings:
    """A crawl as the crawler's configuration spells it."""

    rate_per_s: float = 0.0
    concurrency: int = 64
    page_size: int = 100
    projects: tuple[str, ...] = ()
    images: tuple[str, ...] = ()  # "repo/image"; empty: discover them all


def _toml_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(orjson.dumps(item).decode() for item in items) + "]"


def _write_config(path: Path, url: str, settings: CrawlSettings) -> None:
    lines = [
        "[api]",
        f"endpoint = {orjson.dumps(url).decode()}",
        f"public_key = {orjson.dumps(DEMO_PUBLIC_KEY).decode()}",
        f"private_key = {orjson.dumps(DEMO_PRIVATE_KEY).decode()}",
        "[crawl]",
        f"rate = {settings.rate_per_s}",
        f"concurrency = {settings.concurrency}",
        f"page_size = {settings.page_size}",
    ]
    if settings.projects:
        lines.append(f"projects = {_toml_list(settings.projects)}")
    if settings.images:
        lines.append(f"images = {_toml_list(settings.images)}")
    path.write_text("\n".join(lines) + "\n")


def run_crawler(
    sim: Simulator,
    settings: CrawlSettings,
    workdir: Path,
    timeout_s: float,
    profile_path: Path | None = None,
) -> ChildResult:
    """``crawler crawl`` against ``sim`` in a child process; the export is
    written under ``workdir`` and deleted afterwards."""
    url = _check_loopback(sim.url)
    serial = next(_serial)
    config = workdir / f"crawl-{serial}.toml"
    out = workdir / f"tags-{serial}.jsonl"
    errors = workdir / f"errors-{serial}.jsonl"
    _write_config(config, url, settings)
    argv = [sys.executable, str(HERE / "_crawler_proc.py"), "crawl"]
    argv += ["--config", str(config), "--endpoint", url]
    argv += ["--out", str(out), "--errors", str(errors)]
    env = {"CRAWLER_BENCH_PROFILE": str(profile_path)} if profile_path else None
    try:
        result = run_child(argv, workdir, timeout_s, env)
    finally:
        for path in (out, errors, Path(f"{out}.part"), Path(f"{out}.checkpoint")):
            path.unlink(missing_ok=True)
    if result.status != 0:
        last_words = result.stderr[-400:]
        raise BenchError(
            f"the crawler exited with status {result.status}: {last_words!r}"
        )
    return result


def _client_argv(script: str, sim: Simulator, projects: tuple[str, ...]) -> list[str]:
    argv = [sys.executable, str(HERE / script), "--endpoint", _check_loopback(sim.url)]
    argv += ["--public-key", DEMO_PUBLIC_KEY, "--private-key", DEMO_PRIVATE_KEY]
    for project_id in projects:
        argv += ["--project", project_id]
    return argv


def run_bare(
    sim: Simulator,
    projects: tuple[str, ...],
    connections: int,
    workdir: Path,
    timeout_s: float,
    export: Path | None = None,
) -> ChildResult:
    """The bare aiohttp loop (``_bare``) against ``sim``; with ``export``, it
    also writes the tags there as JSON Lines."""
    argv = _client_argv("_bare.py", sim, projects)
    argv += ["--connections", str(connections)]
    if export is not None:
        argv += ["--export", str(export)]
    return run_child(argv, workdir, timeout_s)


def run_sequential(
    sim: Simulator, projects: tuple[str, ...], workdir: Path, timeout_s: float
) -> ChildResult:
    """The sequential urllib loop (``_sequential``) against ``sim``."""
    return run_child(_client_argv("_sequential.py", sim, projects), workdir, timeout_s)


def summary_line(stderr: str) -> str:
    """The crawler's one-line summary out of its standard error."""
    lines = [line for line in stderr.splitlines() if " requests (" in line]
    return lines[-1].removeprefix("crawler: ") if lines else "(no summary)"
