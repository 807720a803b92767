"""``crawler simulate``, plus two things the benchmarks need.

It takes every ``crawler simulate`` option and builds the registry and options
with the same code, then:

* ``--single-image N`` serves a one-repository registry instead: image
  ``bench/big`` with N tags and image ``bench/small`` with 50, in the default
  project ``org-bench`` (the synthetic registry has no single-image form);
* ``--pregenerate`` generates every image's tags before serving.  The
  simulator generates an image's tags on its first page and keeps them, so
  without this the first crawl of a registry also pays for building it, in
  server time, and whichever client runs first looks slower.

It prints the simulator's usual start-up line, with the real port, once it
accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import functools

from crawler import _simulator

SINGLE_PROJECT = "org-bench"
SINGLE_REPO = "bench"
SMALL_IMAGE_TAGS = 50


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    _simulator.add_arguments(parser)
    parser.add_argument("--single-image", type=int, metavar="N")
    parser.add_argument("--pregenerate", action="store_true")
    args = parser.parse_args()
    if args.host != "127.0.0.1":
        parser.error(f"--host must be 127.0.0.1, not {args.host!r}")
    return args


def _single_image(tag_count: int, seed: int) -> _simulator.SimRegistry:
    images = {"big": tag_count, "small": SMALL_IMAGE_TAGS}
    layout = {SINGLE_PROJECT: {SINGLE_REPO: {"type": "private", "images": images}}}
    return _simulator.SimRegistry.from_layout(layout, seed=seed)


def main() -> None:
    args = _parse_args()
    registry, options, host, port = _simulator.options_from_args(args)
    if args.single_image is not None:
        registry = _single_image(args.single_image, args.seed)
    if args.pregenerate:
        # A private walk, but the only way to build every tag list up front.
        for image in registry._images():
            image.tags()
    announce = functools.partial(print, flush=True)  # _procs reads the URL
    asyncio.run(_simulator.serve(registry, options, host, port, announce=announce))


if __name__ == "__main__":
    main()
