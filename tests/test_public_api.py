"""The package's public face: exactly these names, and the error tree."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import crawler
from crawler import (
    ApiError,
    AuthError,
    ConfigError,
    CrawlerError,
    EndpointError,
    FatalError,
    ImageRef,
    OutputError,
    ProjectError,
    RequestTimeoutError,
    Tag,
    TargetError,
    ThrottledError,
    TransientError,
)

PUBLIC = [
    "ApiConfig",
    "ApiError",
    "AuthError",
    "Config",
    "ConfigError",
    "CrawlConfig",
    "CrawlerError",
    "EndpointError",
    "FatalError",
    "ImageRef",
    "OutputConfig",
    "OutputError",
    "ProjectError",
    "RequestTimeoutError",
    "Stats",
    "Tag",
    "TagCrawler",
    "TargetError",
    "ThrottledError",
    "TransientError",
    "load_config",
    "sign",
]


def test_all_is_pinned() -> None:
    assert crawler.__all__ == PUBLIC


def test_all_is_sorted_and_every_name_exists() -> None:
    assert crawler.__all__ == sorted(crawler.__all__)
    for name in crawler.__all__:
        assert getattr(crawler, name) is not None


def test_star_import_gives_exactly_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from crawler import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == PUBLIC


def test_public_names_come_from_private_modules() -> None:
    for name in PUBLIC:
        module = getattr(crawler, name).__module__
        assert module.startswith("crawler._"), (name, module)


def test_version() -> None:
    assert crawler.__version__ == "0.1.0"


def test_typed_marker_ships() -> None:
    assert (Path(crawler.__file__).parent / "py.typed").is_file()


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (ConfigError, (CrawlerError, ValueError)),
        (OutputError, (CrawlerError, OSError)),
        (ApiError, (CrawlerError,)),
        (TransientError, (ApiError,)),
        (ThrottledError, (TransientError,)),
        (RequestTimeoutError, (TransientError, TimeoutError)),
        (TargetError, (ApiError,)),
        (ProjectError, (ApiError,)),
        (FatalError, (ApiError,)),
        (AuthError, (FatalError,)),
        (EndpointError, (FatalError, ConnectionError)),
    ],
)
def test_error_tree(cls: type[Exception], bases: tuple[type[Exception], ...]) -> None:
    for base in bases:
        assert issubclass(cls, base)
    assert issubclass(cls, CrawlerError)


def test_failure_kinds_are_distinct() -> None:
    # A fatal error must never be mistaken for one the crawl may step over.
    assert not issubclass(FatalError, (TransientError, TargetError, ProjectError))
    assert not issubclass(ProjectError, (TransientError, TargetError))
    assert not issubclass(TargetError, TransientError)


def test_records_are_frozen() -> None:
    tag = Tag("p", "r", "i", "t", None, "2026-01-01T00:00:00Z")
    with pytest.raises(dataclasses.FrozenInstanceError):
        tag.tag_name = "other"  # type: ignore[misc]
    image = ImageRef(None, "r", "i")
    with pytest.raises(dataclasses.FrozenInstanceError):
        image.repo_name = "other"  # type: ignore[misc]
    assert ImageRef(None, "r", "i") == image
    assert hash(ImageRef(None, "r", "i")) == hash(image)
