"""What every measured child process reports about itself.

A child (the crawler wrapper, the bare aiohttp loop, the sequential loop)
times only its work: interpreter start-up and imports cost the same whatever
the crawl, and would blur a per-page figure.  The parent still reads the whole
process's CPU from ``os.wait4``; this report is the finer figure beside it.

Peak memory is the child's own ``VmHWM``, not the ``ru_maxrss`` that
``wait4`` or ``RUSAGE_CHILDREN`` give: Linux carries the parent's peak RSS
into a child it spawns, so ``ru_maxrss`` never reads below the benchmark
process's own size at the time.

``python _child.py`` alone reports the cost of the crawler's imports.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["REPORT_ENV", "run_measured"]

REPORT_ENV = "CRAWLER_BENCH_REPORT"  # path the child writes its JSON report to


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    """This process's resident-set high-water mark, from /proc."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # given in kB
    raise OSError("/proc/self/status has no VmHWM line")


def run_measured(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work``, then write its result, CPU and wall seconds and peak RSS
    to the report file named by the environment; return the report."""
    cpu_before_s = _cpu_s()
    wall_before_s = time.perf_counter()
    result = work()
    report = {
        **result,
        "work_cpu_s": _cpu_s() - cpu_before_s,
        "work_wall_s": time.perf_counter() - wall_before_s,
        "startup_cpu_s": cpu_before_s,
        "peak_rss_mb": _peak_rss_mb(),
    }
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "wb") as file:
            file.write(orjson.dumps(report))
    return report


if __name__ == "__main__":
    from crawler._cli import build_parser

    build_parser()  # imports the simulator too, as every crawler run does
    run_measured(lambda: {})
