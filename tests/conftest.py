"""Shared fixtures: simulators on loopback, configs aimed at them, and helpers.

Every endpoint a test uses is a simulator it started itself on 127.0.0.1, a
plain web server it started itself there (``html_server``), or a loopback port
nothing listens on; the crawler's default endpoint is a real public host, so no
config here relies on it.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from crawler import ApiConfig, Config, CrawlConfig, OutputConfig
from crawler._simulator import (
    DEMO_PRIVATE_KEY,
    DEMO_PUBLIC_KEY,
    SimOptions,
    SimRegistry,
    SimServer,
)

# A registry small enough to reason about by hand: every shape a crawl meets,
# in two projects.  Listed tags are served newest first, in the given order.
LAYOUT: dict[str, Any] = {
    "acme": {
        "web": {
            "type": "public",
            "images": {"big": 5_000, "empty": [], "three": ["c", "b", "a"]},
        },
        "vault": {"type": "private", "images": {"secrets": ["latest", "v1"]}},
        "hollow": {"type": "public", "images": {}},
        "team+core&x=y": {
            "type": "private",
            "images": {"img name/ü": ["v1+build", "a&b=c", "sp ace", "ünï-😀", "%2B"]},
        },
    },
    "other": {
        "models": {"type": "private", "images": {"trainer": 250, "slim": 1}},
        "site": {"type": "public", "images": {"nginx": ["1.25", "1.24"]}},
    },
}

# How many tags each image of LAYOUT has, and which type each repository is.
LAYOUT_TAG_COUNTS: dict[tuple[str, str, str], int] = {
    (project, repo, image): tags if isinstance(tags, int) else len(tags)
    for project, repos in LAYOUT.items()
    for repo, spec in repos.items()
    for image, tags in spec["images"].items()
}
LAYOUT_REPO_TYPES: dict[tuple[str, str], str] = {
    (project, repo): spec["type"]
    for project, repos in LAYOUT.items()
    for repo, spec in repos.items()
}

# A loopback port nobody listens on: connecting to it is refused at once.
DEAD_ENDPOINT = "http://127.0.0.1:9"

# The keys of an exported row, in the order they are written.
ROW_KEYS = [
    "project_id",
    "repo_name",
    "image_name",
    "tag_name",
    "digest",
    "update_time",
]

_CRAWLER_ENV = ("CRAWLER_ENDPOINT", "CRAWLER_PUBLIC_KEY", "CRAWLER_PRIVATE_KEY")


def row_key(row: dict[str, Any]) -> tuple[str, str, str, str]:
    return (
        str(row["project_id"]),
        row["repo_name"],
        row["image_name"],
        row["tag_name"],
    )


def sort_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in the order of ``SimRegistry.truth_rows``."""
    return sorted(rows, key=row_key)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    with open(path, "rb") as file:
        return [orjson.loads(line) for line in file]


def make_config(
    endpoint: str,
    *,
    public_key: str = DEMO_PUBLIC_KEY,
    private_key: str = DEMO_PRIVATE_KEY,
    method: str = "get",
    timeout_s: float = 10.0,
    output: OutputConfig | None = None,
    **crawl: Any,
) -> Config:
    """A config aimed at ``endpoint``, with no rate limit and no backoff wait,
    so that tests never sleep; ``crawl`` overrides any ``CrawlConfig`` field."""
    crawl_fields: dict[str, Any] = {
        "rate_per_s": 0.0,
        "backoff_base_s": 0.0,
        "backoff_cap_s": 0.0,
        **crawl,
    }
    return Config(
        api=ApiConfig(
            endpoint=endpoint,
            public_key=public_key,
            private_key=private_key,
            method=method,
            timeout_s=timeout_s,
        ),
        crawl=CrawlConfig(**crawl_fields),
        output=output or OutputConfig(),
    )


@pytest.fixture(autouse=True)
def _no_crawler_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys or an endpoint in the caller's environment must not leak in."""
    for name in _CRAWLER_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def layout_registry() -> SimRegistry:
    return SimRegistry.from_layout(LAYOUT)


StartSim = Callable[..., Awaitable[SimServer]]


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """``await start_sim(registry, **SimOptions fields)`` serves ``registry``
    on a free loopback port until the test ends."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(registry: SimRegistry, **options: Any) -> SimServer:
            sim = SimServer(registry, SimOptions(**options), host="127.0.0.1")
            return await stack.enter_async_context(sim)

        yield start


# A web page, as a web server that is not the API answers.
NOT_THE_API_PAGE = b"<html><body><h1>Welcome</h1></body></html>"


class HtmlServer:
    """A web server on loopback that answers every request with
    ``NOT_THE_API_PAGE`` and status 200: what a wrong endpoint looks like."""

    def __init__(self) -> None:
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                with server._lock:
                    server.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(NOT_THE_API_PAGE)))
                self.end_headers()
                self.wfile.write(NOT_THE_API_PAGE)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet

        self._lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def html_server() -> Iterator[HtmlServer]:
    """A web server of the test's own on loopback that is not the API."""
    server = HtmlServer()
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------- processes


def crawler_command() -> list[str]:
    """The ``crawler`` console script of the interpreter running the tests."""
    script = Path(sys.executable).with_name("crawler")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "crawler"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CRAWLER_ENV}
    env.update(extra)
    return env


class SimProcess:
    """A simulator running as a separate process on a loopback port."""

    def __init__(self, command: list[str], port: int, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=clean_env(),
            )

    def wait_until_accepting(self, deadline_s: float = 30.0) -> bool:
        """Wait until the port accepts connections; False if the process
        exited first."""
        give_up = time.monotonic() + deadline_s
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_sim_process(
    command_for_port: Callable[[int], list[str]], log_dir: Path
) -> SimProcess:
    """Start a simulator process on a free port, retrying if another process
    took the port between picking and binding it."""
    last = ""
    for attempt in range(3):
        port = free_port()
        sim = SimProcess(command_for_port(port), port, log_dir / f"sim-{attempt}.log")
        if sim.wait_until_accepting():
            return sim
        sim.stop()
        last = sim.output()
    pytest.fail(f"the simulator process did not start:\n{last}")


SIM_SEED = 5
SIM_TAGS = 2_000


@pytest.fixture(scope="module")
def sim_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    """``crawler simulate`` serving ``SimRegistry(SIM_SEED, SIM_TAGS)``."""
    log_dir = tmp_path_factory.mktemp("sim")

    def command(port: int) -> list[str]:
        return [
            *crawler_command(),
            "simulate",
            "--port",
            str(port),
            "--seed",
            str(SIM_SEED),
            "--tags",
            str(SIM_TAGS),
        ]

    sim = start_sim_process(command, log_dir)
    try:
        yield sim
    finally:
        sim.stop()
