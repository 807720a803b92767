"""The export's own safety: the lock, and resuming only what is verified."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from crawler import ImageRef, OutputError
from crawler._export import JsonlExport

FINGERPRINT = {"endpoint": "http://127.0.0.1:1", "projects": ["p"]}
A = ImageRef("p", "repo", "a")
B = ImageRef("p", "repo", "b")


def _rows(*names: str) -> list[dict[str, object]]:
    return [{"TagName": name, "UpdateTime": "t", "Digest": "d"} for name in names]


async def _interrupted_export(tmp_path: Path) -> str:
    """An export stopped after finishing images a (2 tags) and b (3 tags)."""
    path = str(tmp_path / "tags.jsonl")
    sink = JsonlExport(path, str(tmp_path / "errors.jsonl"), FINGERPRINT)
    sink.open(resume=False)
    await sink.rows(A, _rows("a1", "a2"))
    await sink.done(A, 2)
    await sink.rows(B, _rows("b1", "b2", "b3"))
    await sink.done(B, 3)
    sink.close()
    return path


def _names(path: str) -> list[str]:
    with open(path, "rb") as file:
        return [orjson.loads(line)["tag_name"] for line in file]


async def test_a_second_crawl_of_the_same_export_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "tags.jsonl")
    first = JsonlExport(path, str(tmp_path / "e1.jsonl"), FINGERPRINT)
    first.open(resume=False)
    second = JsonlExport(path, str(tmp_path / "e2.jsonl"), FINGERPRINT)
    with pytest.raises(OutputError) as info:
        second.open(resume=False)
    assert str(info.value) == (
        f"another crawl is writing {path} (it holds {path}.lock); "
        "wait for it or choose another --out"
    )
    await first.rows(A, _rows("a1"))
    first.commit()
    assert _names(path) == ["a1"]
    assert not Path(path + ".lock").exists()
    third = JsonlExport(path, str(tmp_path / "e3.jsonl"), FINGERPRINT)
    third.open(resume=False)  # the lock went with the first crawl
    third.close()


async def test_resume_keeps_finished_images(tmp_path: Path) -> None:
    path = await _interrupted_export(tmp_path)
    sink = JsonlExport(path, str(tmp_path / "errors.jsonl"), FINGERPRINT)
    sink.open(resume=True)
    assert sink.done_images == {("p", "repo", "a"), ("p", "repo", "b")}
    assert sink.resumed_tags == 5
    sink.commit()
    assert _names(path) == ["a1", "a2", "b1", "b2", "b3"]


async def test_resume_reads_again_an_image_whose_rows_are_short(
    tmp_path: Path,
) -> None:
    path = await _interrupted_export(tmp_path)
    part = Path(path + ".part")
    lines = part.read_bytes().splitlines(keepends=True)
    part.write_bytes(b"".join(lines[:-1]))  # b lost its last row
    sink = JsonlExport(path, str(tmp_path / "errors.jsonl"), FINGERPRINT)
    sink.open(resume=True)
    assert sink.done_images == {("p", "repo", "a")}
    assert sink.skip(A) and not sink.skip(B)
    assert sink.resumed_tags == 2
    await sink.rows(B, _rows("b1", "b2", "b3"))  # the crawl reads b again
    sink.commit()
    assert _names(path) == ["a1", "a2", "b1", "b2", "b3"]


async def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path: Path) -> None:
    path = await _interrupted_export(tmp_path)
    other = {**FINGERPRINT, "projects": ["q"]}
    sink = JsonlExport(path, str(tmp_path / "errors.jsonl"), other)
    with pytest.raises(OutputError) as info:
        sink.open(resume=True)
    assert str(info.value) == (
        f"{path}.checkpoint belongs to a crawl with other settings; "
        "run again without --resume to start afresh"
    )
    assert not Path(path + ".lock").exists()
    # The interrupted crawl's files stay for a --resume with its own settings.
    assert _names(path + ".part") == ["a1", "a2", "b1", "b2", "b3"]
    assert Path(path + ".checkpoint").exists()
