"""The JSON Lines export, its errors sink and its resume checkpoint.

A file export is written to ``PATH.part`` and renamed to ``PATH`` only when
the crawl ends, so a reader never sees half an export.  Beside it,
``PATH.checkpoint`` lists the images whose tags are all in ``PATH.part``; it
is appended to only after those tags were flushed, so after a kill at any
moment the checkpoint never claims more than the part file holds.  Resuming
keeps the part file's rows of checkpointed images, drops the rest, and
crawls only what is missing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

import orjson

from ._errors import OutputError
from ._models import ImageRef
from ._paging import Rows

__all__ = ["JsonlExport"]

logger = logging.getLogger(__name__)

_CHECKPOINT_VERSION = 1
_BUFFER_BYTES = 1 << 18  # the export file's write buffer
_CHECKPOINT_EVERY_S = 1.0  # and record finished images at least this often

ImageKey = tuple[str | None, str, str]


def _key(image: ImageRef) -> ImageKey:
    return (image.project_id, image.repo_name, image.image_name)


def _prefix(image: ImageRef) -> bytes:
    """The constant start of every line of one image, up to the tag name."""
    head = orjson.dumps(
        {
            "project_id": image.project_id,
            "repo_name": image.repo_name,
            "image_name": image.image_name,
        }
    )
    return head[:-1] + b',"tag_name":'


class JsonlExport:
    """A crawl consumer writing JSON Lines to a file or to standard output.

    Use ``open`` before the crawl and ``commit`` (complete) or ``close``
    (interrupted: keep the part file and checkpoint for ``--resume``) after.
    """

    def __init__(
        self, path: str, errors_path: str, fingerprint: dict[str, Any]
    ) -> None:
        self.path = path
        self.errors_path = errors_path
        self.to_stdout = path == "-"
        self.part_path = path + ".part"
        self.checkpoint_path = path + ".checkpoint"
        self.lock_path = path + ".lock"
        self._lock: int | None = None
        self._fingerprint = fingerprint
        self._out_guard = _OutputGuard(path)
        self._out: IO[bytes] | None = None
        self._errors: IO[bytes] | None = None
        self._checkpoint: IO[bytes] | None = None
        self._finished: list[bytes] = []
        self._last_checkpoint = time.monotonic()
        self.done_images: set[ImageKey] = set()
        self.resumed_tags = 0
        self.written_tags = 0
        self.failures = 0

    # -- set-up and tear-down ---------------------------------------------

    def open(self, resume: bool) -> None:
        """Open the sinks; with ``resume``, keep what a previous run finished."""
        try:
            if self.to_stdout:
                self._out = sys.stdout.buffer
            else:
                with self._guard(self.path):
                    if os.path.isdir(self.path):
                        raise IsADirectoryError(errno.EISDIR, "Is a directory")
                    self._take_lock()
                    if not (resume and self._load_checkpoint()):
                        self._out = open(self.part_path, "wb", _BUFFER_BYTES)
                        self._checkpoint = open(self.checkpoint_path, "wb")
                        self._write_checkpoint_header()
            with self._guard(self.errors_path):
                self._errors = open(self.errors_path + ".part", "wb")
        except OutputError:
            self.close()
            raise

    def skip(self, image: ImageRef) -> bool:
        """Whether ``image`` was finished by the run being resumed."""
        return _key(image) in self.done_images

    def commit(self) -> None:
        """The crawl ended: put the export and its errors in place.

        The checkpoint is kept when targets failed, so that ``--resume``
        retries only those.
        """
        self.flush()
        if self._out is not None and not self.to_stdout:
            with self._guard(self.path):
                self._out.flush()
                os.fsync(self._out.fileno())
                self._out.close()
                os.replace(self.part_path, self.path)
        self._out = None
        self._close_checkpoint(remove=self.failures == 0)
        self._close_errors(publish=True)
        self._release_lock()

    def close(self) -> None:
        """The crawl stopped early: flush, keep the part file and checkpoint
        (unless there is nothing in them to resume from)."""
        empty = not (self.written_tags or self.done_images)
        try:
            self.flush()
        finally:
            # Already failing or stopping: a second error (the disk is still
            # full) must not hide the first, so these steps only log.
            with _logged_oserror():
                if self._out is not None and not self.to_stdout:
                    out, self._out = self._out, None
                    out.close()
                    if empty:
                        os.unlink(self.part_path)
            with _logged_oserror():
                self._close_checkpoint(remove=empty)
            with _logged_oserror():
                self._close_errors(publish=True)
            with _logged_oserror():
                self._release_lock()

    # -- the consumer interface -------------------------------------------

    async def rows(self, image: ImageRef, rows: Rows) -> None:
        prefix = _prefix(image)
        dumps = orjson.dumps
        lines = [
            b"".join(
                (
                    prefix,
                    dumps(row["TagName"]),
                    b',"digest":',
                    dumps(row.get("Digest")),
                    b',"update_time":',
                    dumps(row.get("UpdateTime")),
                    b"}\n",
                )
            )
            for row in rows
        ]
        self.written_tags += len(lines)
        if self._out is not None:
            with self._out_guard:
                self._out.write(b"".join(lines))

    async def done(self, image: ImageRef, count: int) -> None:
        if self._checkpoint is None:
            return
        self._finished.append(
            orjson.dumps({"done": _key(image), "tags": count}) + b"\n"
        )
        if time.monotonic() - self._last_checkpoint >= _CHECKPOINT_EVERY_S:
            self.flush()

    async def failed(self, record: dict[str, Any]) -> None:
        self.failures += 1
        if self._errors is not None:
            with self._guard(self.errors_path):
                self._errors.write(orjson.dumps(record) + b"\n")
                self._errors.flush()

    def flush(self) -> None:
        """Write buffered rows out, then record the images they finish."""
        if self._out is not None:
            with self._guard(self.path):
                self._out.flush()
        if self._checkpoint is not None and self._finished:
            with self._guard(self.checkpoint_path):
                self._checkpoint.write(b"".join(self._finished))
                self._checkpoint.flush()
            self._finished.clear()
        self._last_checkpoint = time.monotonic()

    def _guard(self, path: str) -> _OutputGuard:
        return _OutputGuard(path)

    def _take_lock(self) -> None:
        """Make sure no other crawl writes this export at the same time."""
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputError(
                    f"another crawl is writing {self.path} (it holds "
                    f"{self.lock_path}); wait for it or choose another --out"
                ) from None
            # The holder before us may have removed the file between our open
            # and our lock: then we hold a lock nobody else can see.
            if os.path.exists(self.lock_path) and os.path.samestat(
                os.fstat(fd), os.stat(self.lock_path)
            ):
                self._lock = fd
                return
            os.close(fd)

    def _release_lock(self) -> None:
        if self._lock is not None:
            fd, self._lock = self._lock, None
            os.unlink(self.lock_path)  # while still holding it
            os.close(fd)

    def _write_checkpoint_header(self) -> None:
        assert self._checkpoint is not None
        header = {"checkpoint": _CHECKPOINT_VERSION, "crawl": self._fingerprint}
        self._checkpoint.write(orjson.dumps(header) + b"\n")
        self._checkpoint.flush()

    def _load_checkpoint(self) -> bool:
        """Keep the finished images of a previous run; return whether there
        was one to resume."""
        source = self.part_path
        if not os.path.exists(source):
            source = self.path  # that run ended with failures: retry them
        try:
            with open(self.checkpoint_path, "rb") as file:
                lines = file.read().splitlines()
        except FileNotFoundError:
            lines = []
        if not lines or not os.path.exists(source):
            logger.warning("nothing to resume at %s; starting afresh", self.path)
            return False
        if _header_of(lines[0]) != self._fingerprint:
            raise OutputError(
                f"{self.checkpoint_path} belongs to a crawl with other settings; "
                "run again without --resume to start afresh"
            )
        expected = self._read_finished(lines[1:])
        counts = self._rewrite_part(source, expected)
        # An image is kept only if the part file holds exactly the tags the
        # checkpoint recorded for it; anything else is read again.
        done = {key for key, count in counts.items() if count == expected[key]}
        if len(done) < len(counts):
            self._rewrite_part(self.part_path, done)
        self.done_images = done
        self.resumed_tags = sum(counts[key] for key in done)
        self._out = open(self.part_path, "ab", _BUFFER_BYTES)
        self._checkpoint = open(self.checkpoint_path, "wb")
        self._write_checkpoint_header()
        self._finished = [
            orjson.dumps({"done": key, "tags": counts[key]}) + b"\n"
            for key in sorted(done, key=str)
        ]
        self.flush()
        logger.info(
            "resuming: %d images (%d tags) already exported",
            len(done),
            self.resumed_tags,
        )
        return True

    @staticmethod
    def _read_finished(lines: list[bytes]) -> dict[ImageKey, int]:
        """The finished images of a checkpoint, with their tag counts."""
        done: dict[ImageKey, int] = {}
        for line in lines:
            try:
                record = orjson.loads(line)
                project_id, repo_name, image_name = record["done"]
                count = record["tags"]
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                break  # a line cut short by the kill: everything before is good
            fields = (project_id or "", repo_name, image_name)
            if all(type(value) is str for value in fields) and type(count) is int:
                done[(project_id, repo_name, image_name)] = count
        return done

    def _rewrite_part(
        self, source: str, keep: Iterable[ImageKey]
    ) -> dict[ImageKey, int]:
        """Keep only the rows of images in ``keep``; count them per image."""
        counts = dict.fromkeys(keep, 0)
        tmp = self.part_path + ".tmp"
        with open(source, "rb") as old, open(tmp, "wb") as new:
            for line in old:
                try:
                    row = orjson.loads(line)
                    key = (row["project_id"], row["repo_name"], row["image_name"])
                    wanted = key in counts
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue  # the last line, cut short by the kill
                if wanted:
                    new.write(line)
                    counts[key] += 1
        os.replace(tmp, self.part_path)
        return counts

    def _close_checkpoint(self, remove: bool) -> None:
        if self._checkpoint is not None:
            checkpoint, self._checkpoint = self._checkpoint, None
            checkpoint.close()
            if remove:
                os.unlink(self.checkpoint_path)

    def _close_errors(self, publish: bool) -> None:
        if self._errors is None:
            return
        errors, self._errors = self._errors, None
        errors.close()
        if publish:
            with self._guard(self.errors_path):
                os.replace(self.errors_path + ".part", self.errors_path)


@contextlib.contextmanager
def _logged_oserror() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        logger.warning("while closing the export: %s", exc)


def _header_of(line: bytes) -> object:
    try:
        header = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return header.get("crawl") if isinstance(header, dict) else None


class _OutputGuard:
    """Turns an ``OSError`` on an output file into a one-line ``OutputError``."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            reason = exc.strerror or str(exc)
            hint = (
                "free some space, then run again with --resume"
                if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                else "choose a writable location with --out / --errors"
            )
            raise OutputError(f"cannot write {self.path}: {reason}; {hint}") from exc
