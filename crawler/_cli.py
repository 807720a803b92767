"""The ``crawler`` command line: crawl, tags, simulate and demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import orjson

from ._client import Stats
from ._config import Config, load_config, require_keys
from ._crawl import TagCrawler
from ._errors import ConfigError, CrawlerError, OutputError
from ._export import JsonlExport

__all__ = ["main"]

logger = logging.getLogger("crawler")

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"must be a whole number above 0, not {text!r}"
        )
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be requests per second, 0 for no limit, not {text!r}"
        )
    return value


def _add_api_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument("--endpoint", metavar="URL", help="API endpoint URL")
    parser.add_argument(
        "--method", choices=("get", "form", "json"), help="how requests are sent"
    )
    parser.add_argument("--rate", type=_rate, metavar="R", help="requests per second")
    parser.add_argument(
        "--concurrency", type=_positive_int, metavar="N", help="requests in flight"
    )
    parser.add_argument(
        "--page-size", type=_positive_int, metavar="N", help="rows asked per page"
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no summary")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command-line parser.  The simulator, and the aiohttp server code
    it imports, are loaded only when ``command`` is ``simulate``."""
    parser = argparse.ArgumentParser(
        prog="crawler",
        description="Export every image tag of a container registry as JSON Lines.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crawl = commands.add_parser("crawl", help="export every tag of the registry")
    crawl.set_defaults(parser=crawl)
    _add_api_options(crawl)
    crawl.add_argument("--out", metavar="PATH", help="export file, or - for stdout")
    crawl.add_argument("--errors", metavar="PATH", help="failed-targets file")
    crawl.add_argument(
        "--project",
        action="append",
        metavar="ID",
        help="project to crawl (repeatable; default: the configured ones)",
    )
    crawl.add_argument(
        "--resume", action="store_true", help="continue an interrupted crawl"
    )

    tags = commands.add_parser("tags", help="print one image's tags")
    tags.set_defaults(parser=tags)
    _add_api_options(tags)
    tags.add_argument("repo", metavar="REPO")
    tags.add_argument("image", metavar="IMAGE")
    tags.add_argument("--tag", metavar="NAME", help="just this tag")
    tags.add_argument(
        "--project",
        metavar="ID",
        help="project of the image (default: the one configured project, "
        "else the account's default project)",
    )

    simulate = commands.add_parser(
        "simulate", help="serve the embedded registry simulator"
    )
    simulate.set_defaults(parser=simulate)
    if command == "simulate":
        from . import _simulator

        _simulator.add_arguments(simulate)

    demo = commands.add_parser(
        "demo", help="crawl the simulator into tags.jsonl and check the export"
    )
    demo.set_defaults(parser=demo)
    demo.add_argument("--out", default="tags.jsonl", metavar="PATH")
    demo.add_argument("--errors", default="errors.jsonl", metavar="PATH")
    demo.add_argument("--tags", type=_positive_int, default=12_000, metavar="N")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--rate", type=_rate, default=200.0, metavar="R")
    demo.add_argument("-q", "--quiet", action="store_true", help="no summary")
    demo.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def _configure(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    api = {"endpoint": args.endpoint, "method": args.method}
    crawl = {
        "rate_per_s": args.rate,
        "concurrency": args.concurrency,
        "page_size": args.page_size,
    }
    output: dict[str, Any] = {}
    if args.command == "crawl":
        output = {"path": args.out, "errors": args.errors}
        if args.project:
            crawl["projects"] = tuple(args.project)
    config = config.replace(
        api={k: v for k, v in api.items() if v is not None},
        crawl={k: v for k, v in crawl.items() if v is not None},
        output={k: v for k, v in output.items() if v is not None},
    )
    require_keys(config)
    return config


def fingerprint(config: Config) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the crawl's scope."""
    crawl = config.crawl
    return {
        "endpoint": config.api.endpoint.rstrip("/"),
        "projects": list(crawl.projects),
        "repo_types": list(crawl.repo_types),
        "repos": list(crawl.repos),
        "images": ["/".join(pair) for pair in crawl.images],
    }


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


async def _flush_every_second(sink: JsonlExport) -> None:
    """Checkpoint finished images even while one long listing keeps the
    crawl from finishing more."""
    while True:
        await asyncio.sleep(1.0)
        try:
            sink.flush()
        except OutputError:
            return  # the crawl's own next write reports it


async def export(config: Config, resume: bool, stats: Stats) -> int:
    """Crawl into the configured export; return the exit status.

    An interrupted or failed crawl leaves the part file and checkpoint for
    ``--resume``.  A crawl in which some targets failed is published with
    exit 3, unless nothing at all could be exported: then the previous
    export stays in place and the crawl fails.
    """
    sink = JsonlExport(config.output.path, config.output.errors, fingerprint(config))
    sink.open(resume)
    stats.tags += sink.resumed_tags
    stats.images += len(sink.done_images)
    flusher = asyncio.create_task(_flush_every_second(sink))
    try:
        async with TagCrawler(config, stats=stats) as crawler:
            await crawler.run(sink, skip=sink.skip)
        flusher.cancel()
        if sink.failures and not stats.tags:
            raise CrawlerError(
                f"nothing could be exported: {_plural(sink.failures, 'target')} "
                f"failed, listed in {config.output.errors}; {config.output.path} "
                "was left as it was"
            )
    except BaseException:
        flusher.cancel()
        sink.close()
        raise
    sink.commit()
    if sink.failures:
        logger.warning(
            "%s failed; they are listed in %s, and --resume retries them",
            _plural(sink.failures, "target"),
            config.output.errors,
        )
        return EXIT_PARTIAL
    return EXIT_OK


async def _crawl_command(args: argparse.Namespace) -> int:
    config = _configure(args)
    if args.resume and config.output.path == "-":
        raise ConfigError("--resume needs a file export to continue; give --out PATH")
    stats = Stats()
    try:
        status = await export(config, args.resume, stats)
    except BaseException as exc:
        if not isinstance(exc, CrawlerError):
            _summary(args, stats)  # interrupted: say how far it got
        if stats.tags and config.output.path != "-":
            logger.warning(
                "the export so far is kept in %s.part; "
                "run again with --resume to continue",
                config.output.path,
            )
        raise
    _summary(args, stats)
    return status


async def _tags_command(args: argparse.Namespace) -> int:
    config = _configure(args)
    project_id = args.project
    if project_id is None and len(config.crawl.projects) == 1:
        project_id = config.crawl.projects[0]
    async with TagCrawler(config) as crawler:
        tags = await crawler.image_tags(
            args.repo, args.image, project_id=project_id, tag_name=args.tag
        )
    if args.tag is not None and not tags:
        raise CrawlerError(f"{args.repo}/{args.image} has no tag {args.tag!r}")
    out = sys.stdout.buffer
    out.write(b"".join(orjson.dumps(tag.to_dict()) + b"\n" for tag in tags))
    out.flush()
    for failure in crawler.failures:
        logger.warning("%s", failure["message"])
    return EXIT_PARTIAL if crawler.failures else EXIT_OK


async def _simulate_command(args: argparse.Namespace) -> int:
    from . import _simulator

    registry, options, host, port = _simulator.options_from_args(args)
    try:
        await _simulator.serve(registry, options, host, port, announce=_say)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve on {host}:{port}: {exc.strerror or exc}; "
            "choose another --port"
        ) from None
    return EXIT_OK


async def _demo_command(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return await run_demo(args, lambda stats: _summary(args, stats), _say_stderr)


def _say(line: str) -> None:
    print(line, flush=True)


def _say_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _summary(args: argparse.Namespace, stats: Stats) -> None:
    if args.quiet:
        return
    s = stats.as_dict()
    print(
        f"crawler: {s['repos']:,} repositories, {s['images']:,} images, "
        f"{s['tags']:,} tags in {s['elapsed_s']:.1f}s; "
        f"{s['requests']:,} requests ({s['requests_per_s']:,.1f}/s), "
        f"{s['retries']:,} retries, {s['throttled']:,} throttled, "
        f"{s['failures']:,} failures",
        file=sys.stderr,
    )


_COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "crawl": _crawl_command,
    "tags": _tags_command,
    "simulate": _simulate_command,
    "demo": _demo_command,
}


async def _run(args: argparse.Namespace) -> int:
    """Run one command; SIGINT and SIGTERM cancel it cleanly."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if not received:
            received.append(signum)
            task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await _COMMANDS[args.command](args)
    except asyncio.CancelledError:
        if received:
            raise _Interrupted(received[0]) from None
        raise
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _configure_logging(verbose: int) -> None:
    """Warnings by default, ``-v`` progress, ``-vv`` every retry: this
    package's loggers only, not asyncio's or aiohttp's chatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("crawler: %(levelname)s: %(message)s"))
    package = logging.getLogger("crawler")
    package.addHandler(handler)
    package.setLevel((logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)])
    package.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``crawler`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = build_parser(argv[0] if argv else None).parse_known_args(argv)
    if extra:  # let the command's own parser say it, with its own usage line
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _configure_logging(getattr(args, "verbose", 0))
    try:
        return asyncio.run(_run(args))
    except CrawlerError as exc:
        print(f"crawler: error: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except _Interrupted as exc:
        print(f"crawler: stopped by {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("crawler: stopped by SIGINT", file=sys.stderr)
        return 128 + signal.SIGINT
