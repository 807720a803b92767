"""Run the ``crawler`` command line in this process and report its work.

``python benchmarks/_crawler_proc.py crawl --config FILE ...`` is
``python -m crawler crawl --config FILE ...`` with the work timed apart from
start-up (see ``_child``).  With ``CRAWLER_BENCH_PROFILE`` set to a path, the
command runs under cProfile and the statistics are written there.
"""

from __future__ import annotations

import cProfile
import os
import sys
from typing import Any

from _child import run_measured

from crawler._cli import main

PROFILE_ENV = "CRAWLER_BENCH_PROFILE"


def _run(argv: list[str]) -> dict[str, Any]:
    profile_path = os.environ.get(PROFILE_ENV)
    if not profile_path:
        return {"status": main(argv)}
    profiler = cProfile.Profile()
    status = profiler.runcall(main, argv)
    profiler.dump_stats(profile_path)
    return {"status": status}


if __name__ == "__main__":
    report = run_measured(lambda: _run(sys.argv[1:]))
    sys.exit(report["status"])
