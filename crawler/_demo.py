"""``crawler demo``: crawl the embedded simulator and check the export."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import orjson

from ._client import Stats
from ._config import ApiConfig, Config, CrawlConfig, OutputConfig
from ._simulator import (
    DEFAULT_PROJECT_ID,
    DEMO_PRIVATE_KEY,
    DEMO_PUBLIC_KEY,
    SECOND_PROJECT_ID,
    SimOptions,
    SimRegistry,
    SimServer,
)

__all__ = ["compare_export", "run_demo"]


def compare_export(path: str, truth: list[dict[str, Any]]) -> list[str]:
    """Compare a JSON Lines export with ground-truth rows; return the
    differences as sentences (none when the export is exact)."""
    with open(path, "rb") as file:
        rows = [orjson.loads(line) for line in file]
    key = _row_key
    exported = {key(row): row for row in rows}
    expected = {key(row): row for row in truth}
    problems = []
    if len(exported) != len(rows):
        problems.append(f"{len(rows) - len(exported)} tags exported twice")
    missing = expected.keys() - exported.keys()
    extra = exported.keys() - expected.keys()
    if missing:
        problems.append(f"{len(missing)} tags missing, e.g. {min(missing)}")
    if extra:
        problems.append(f"{len(extra)} tags that do not exist, e.g. {min(extra)}")
    wrong = [k for k in expected.keys() & exported.keys() if exported[k] != expected[k]]
    if wrong:
        problems.append(f"{len(wrong)} tags with wrong fields, e.g. {min(wrong)}")
    return problems


def _row_key(row: dict[str, Any]) -> tuple[str, str, str, str]:
    return (
        str(row["project_id"]),
        row["repo_name"],
        row["image_name"],
        row["tag_name"],
    )


async def run_demo(
    args: argparse.Namespace,
    summary: Callable[[Stats], None],
    say: Callable[[str], None],
) -> int:
    """Serve a simulated registry on a free loopback port, export it, check it."""
    from ._cli import export

    registry = SimRegistry(seed=args.seed, total_tags=args.tags)
    async with SimServer(registry, SimOptions(seed=args.seed)) as sim:
        config = Config(
            api=ApiConfig(
                endpoint=sim.url,
                public_key=DEMO_PUBLIC_KEY,
                private_key=DEMO_PRIVATE_KEY,
            ),
            crawl=CrawlConfig(
                projects=(DEFAULT_PROJECT_ID, SECOND_PROJECT_ID),
                rate_per_s=args.rate,
            ),
            output=OutputConfig(path=args.out, errors=args.errors),
        )
        say(f"crawler demo: simulated registry at {sim.url}")
        stats = Stats()
        status = await export(config, resume=False, stats=stats)
        summary(stats)
    truth = registry.truth_rows("current")
    problems = compare_export(args.out, truth)
    if problems:
        say(f"crawler demo: export is WRONG: {'; '.join(problems)}")
        return 1
    say(
        f"crawler demo: {args.out} holds all {len(truth):,} tags of the simulated "
        "registry, each once, every field equal to the ground truth"
    )
    return status
