"""Configuration: TOML file, environment and command line, validated once.

Precedence is command line > environment > file > defaults.  Every problem is
reported as a ``ConfigError`` whose one-line message names the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ._errors import ConfigError

__all__ = [
    "DEFAULT_ENDPOINT",
    "ApiConfig",
    "Config",
    "CrawlConfig",
    "OutputConfig",
    "load_config",
]

DEFAULT_ENDPOINT = "https://api.dezai.com"
REQUEST_METHODS = ("get", "form", "json")
REPO_TYPES = ("private", "public")


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """Where the API is and how to sign for it.

    ``timeout_s`` bounds one HTTP exchange, from sending the request to the
    last byte of the answer; waiting for a connection slot or for the rate
    limiter is not counted.
    """

    endpoint: str = DEFAULT_ENDPOINT
    public_key: str = ""
    private_key: str = field(default="", repr=False)
    timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    method: str = "get"  # get: query string; form or json: POST body


@dataclass(frozen=True, slots=True)
class CrawlConfig:
    """What to crawl and how hard.

    Empty ``projects`` means the account's default project.  Empty ``repos``
    and ``images`` mean every repository and image found by listing them.
    ``rate_per_s`` of 0 means no rate limit.
    """

    projects: tuple[str, ...] = ()
    repo_types: tuple[str, ...] = REPO_TYPES
    repos: tuple[str, ...] = ()
    images: tuple[tuple[str, str], ...] = ()
    page_size: int = 100
    concurrency: int = 64
    rate_per_s: float = 50.0
    max_retries: int = 8
    backoff_base_s: float = 0.25
    backoff_cap_s: float = 30.0
    max_passes: int = 4


@dataclass(frozen=True, slots=True)
class OutputConfig:
    """Where the export goes.  ``path`` of ``-`` means standard output."""

    path: str = "tags.jsonl"
    errors: str = "errors.jsonl"


@dataclass(frozen=True, slots=True)
class Config:
    api: ApiConfig = ApiConfig()
    crawl: CrawlConfig = CrawlConfig()
    output: OutputConfig = OutputConfig()

    def replace(self, **sections: Mapping[str, Any]) -> Config:
        """Return a copy with some fields of some sections changed, validated."""
        changed = {
            name: dataclasses.replace(getattr(self, name), **values)
            for name, values in sections.items()
            if values
        }
        config = dataclasses.replace(self, **changed)
        validate(config)
        return config


# TOML key -> (dataclass field, expected type) per section.  The TOML names
# are the short ones users type; the fields carry units.
_SCHEMA: dict[str, dict[str, tuple[str, type | tuple[type, ...]]]] = {
    "api": {
        "endpoint": ("endpoint", str),
        "public_key": ("public_key", str),
        "private_key": ("private_key", str),
        "timeout": ("timeout_s", (int, float)),
        "connect_timeout": ("connect_timeout_s", (int, float)),
        "method": ("method", str),
    },
    "crawl": {
        "projects": ("projects", list),
        "repo_types": ("repo_types", list),
        "repos": ("repos", list),
        "images": ("images", list),
        "page_size": ("page_size", int),
        "concurrency": ("concurrency", int),
        "rate": ("rate_per_s", (int, float)),
        "max_retries": ("max_retries", int),
        "backoff_base": ("backoff_base_s", (int, float)),
        "backoff_cap": ("backoff_cap_s", (int, float)),
        "max_passes": ("max_passes", int),
    },
    "output": {
        "path": ("path", str),
        "errors": ("errors", str),
    },
}

_SECRETS = frozenset({"api.private_key"})
_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list of strings"}


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_type(where: str, value: object, expected: type | tuple[type, ...]) -> None:
    if isinstance(expected, tuple):
        ok = isinstance(value, expected) and not isinstance(value, bool)
        wanted = "a number"
    else:
        ok = isinstance(value, expected) and not (
            expected is int and isinstance(value, bool)
        )
        wanted = _TYPE_NAMES[expected]
    if expected is list and ok:
        ok = all(isinstance(item, str) for item in value)  # type: ignore[attr-defined]
    if not ok:
        # A secret is never echoed, even a mistyped one.
        shown = _a(type(value).__name__) if where in _SECRETS else repr(value)
        raise ConfigError(f"{where} must be {wanted}, not {shown}")


def _split_image(text: str) -> tuple[str, str]:
    repo, sep, image = text.rpartition("/")
    if not sep or not repo or not image:
        raise ConfigError(
            f"crawl.images entry {text!r} must be 'repository/image', "
            "e.g. 'platform/api'"
        )
    return repo, image


def _section_values(section: str, table: object) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table, not {table!r}")
    schema = _SCHEMA[section]
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in schema:
            hint = _did_you_mean(key, list(schema))
            raise ConfigError(
                f"unknown key {section}.{key}{hint}; "
                "config.example.toml lists every key"
            )
        name, expected = schema[key]
        _check_type(f"{section}.{key}", value, expected)
        if key == "images":
            value = tuple(_split_image(item) for item in value)
        elif isinstance(value, list):
            value = tuple(value)
        elif expected == (int, float):
            value = float(value)
        values[name] = value
    return values


def parse_config(data: Mapping[str, Any]) -> Config:
    """Build a validated ``Config`` from a parsed TOML document."""
    sections: dict[str, dict[str, Any]] = {}
    for section, table in data.items():
        if section not in _SCHEMA:
            hint = _did_you_mean(section, list(_SCHEMA))
            raise ConfigError(
                f"unknown section [{section}]{hint}; "
                "the sections are [api], [crawl] and [output]"
            )
        sections[section] = _section_values(section, table)
    return Config().replace(**sections)


def load_config(
    path: str | os.PathLike[str] | None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read the TOML file at ``path`` (``None``: defaults only), then apply the
    ``CRAWLER_PUBLIC_KEY``, ``CRAWLER_PRIVATE_KEY`` and ``CRAWLER_ENDPOINT``
    environment variables over it."""
    config = Config()
    if path is not None:
        config = parse_config(_read_toml(path))
    env = os.environ if environ is None else environ
    api = {
        name: env[var]
        for var, name in (
            ("CRAWLER_ENDPOINT", "endpoint"),
            ("CRAWLER_PUBLIC_KEY", "public_key"),
            ("CRAWLER_PRIVATE_KEY", "private_key"),
        )
        if env.get(var)
    }
    return config.replace(api=api)


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {os.fspath(path)!r} does not exist; "
            "copy config.example.toml and edit it"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read config file {os.fspath(path)!r}: {exc.strerror}"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"config file {os.fspath(path)!r} is not valid TOML: {exc}"
        ) from None


def _positive(where: str, value: float, *, allow_zero: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        least = "0 or more" if allow_zero else "greater than 0"
        raise ConfigError(f"{where} must be {least}, not {value!r}")


def validate(config: Config) -> None:
    """Raise ``ConfigError`` for the first value that cannot work."""
    api, crawl, output = config.api, config.crawl, config.output
    _check_endpoint(api.endpoint)
    if api.method not in REQUEST_METHODS:
        raise ConfigError(
            f"api.method must be one of {', '.join(REQUEST_METHODS)}, "
            f"not {api.method!r}"
        )
    _positive("api.timeout", api.timeout_s)
    _positive("api.connect_timeout", api.connect_timeout_s)
    _positive("crawl.page_size", crawl.page_size)
    _positive("crawl.concurrency", crawl.concurrency)
    _positive("crawl.rate", crawl.rate_per_s, allow_zero=True)
    _positive("crawl.max_retries", crawl.max_retries, allow_zero=True)
    _positive("crawl.backoff_base", crawl.backoff_base_s, allow_zero=True)
    _positive("crawl.backoff_cap", crawl.backoff_cap_s, allow_zero=True)
    _positive("crawl.max_passes", crawl.max_passes)
    for where, value, most in (
        ("crawl.page_size", crawl.page_size, 10_000),
        ("crawl.concurrency", crawl.concurrency, 1_024),
        ("crawl.max_passes", crawl.max_passes, 100),
        ("crawl.max_retries", crawl.max_retries, 1_000),
    ):
        if value > most:
            raise ConfigError(f"{where} must be at most {most}, not {value}")
    for where, seconds, least in (
        ("crawl.rate", crawl.rate_per_s, 0.01),
        ("api.timeout", api.timeout_s, 0.001),
        ("api.connect_timeout", api.connect_timeout_s, 0.001),
    ):
        if 0 < seconds < least:
            raise ConfigError(f"{where} must be at least {least:g}, not {seconds!r}")
    for repo_type in crawl.repo_types:
        if repo_type not in REPO_TYPES:
            raise ConfigError(
                f"crawl.repo_types entries must be 'private' or 'public', "
                f"not {repo_type!r}"
            )
    if not crawl.repo_types:
        raise ConfigError("crawl.repo_types is empty; list 'private', 'public'")
    if not output.path or not output.errors:
        raise ConfigError("output.path and output.errors must not be empty")
    _check_output_paths(output)


def _check_output_paths(output: OutputConfig) -> None:
    if output.errors == "-":
        raise ConfigError("output.errors must be a file, not standard output")
    if output.path == "-":
        return
    # Compared as real paths: ./tags.jsonl and tags.jsonl are one file.
    export_files = {
        os.path.realpath(output.path + suffix)
        for suffix in ("", ".part", ".checkpoint", ".lock", ".part.tmp")
    }
    errors_files = {
        os.path.realpath(output.errors + suffix) for suffix in ("", ".part")
    }
    if export_files & errors_files:
        raise ConfigError(
            f"output.errors {output.errors!r} and output.path {output.path!r} "
            "would write the same files; choose another --errors"
        )


def _check_endpoint(endpoint: str) -> None:
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"api.endpoint {endpoint!r} is not an http(s) URL; write it like "
            "'https://api.example.com' (in the config, CRAWLER_ENDPOINT or "
            "--endpoint)"
        )
    if parts.query or parts.fragment:
        raise ConfigError(
            f"api.endpoint {endpoint!r} must not carry a query or fragment"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            "api.endpoint must not carry a user name or password; the API "
            "authenticates by signature"
        )


def require_keys(config: Config) -> None:
    """Raise ``ConfigError`` unless both API keys are set."""
    for name, value in (
        ("public_key", config.api.public_key),
        ("private_key", config.api.private_key),
    ):
        if not value.strip():
            var = f"CRAWLER_{name.upper()}"
            raise ConfigError(
                f"api.{name} is not set; put it in the config file's [api] "
                f"table or export {var}"
            )
