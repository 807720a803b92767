"""Configuration: the TOML file, the environment and the command line."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from crawler import (
    ApiConfig,
    Config,
    ConfigError,
    CrawlConfig,
    OutputConfig,
    TagCrawler,
    load_config,
)
from crawler._cli import _configure, build_parser
from crawler._config import DEFAULT_ENDPOINT, require_keys

FULL = """\
[api]
endpoint = "http://127.0.0.1:8123/api"
public_key = "pub"
private_key = "priv"
timeout = 12
connect_timeout = 3.5
method = "json"

[crawl]
projects = ["org-default", "org-ml"]
repo_types = ["private"]
repos = ["web"]
images = ["web/api", "a/b/c"]
page_size = 250
concurrency = 7
rate = 12.5
max_retries = 2
backoff_base = 0.1
backoff_cap = 4
max_passes = 3

[output]
path = "out.jsonl"
errors = "errs.jsonl"
"""


Write = Callable[[str], Path]


@pytest.fixture
def write(tmp_path: Path) -> Write:
    """Write a config file into the test's directory; return its path."""

    def write(text: str, name: str = "crawler.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def test_every_key_is_read(write: Write) -> None:
    config = load_config(write(FULL), environ={})
    assert config == Config(
        api=ApiConfig(
            endpoint="http://127.0.0.1:8123/api",
            public_key="pub",
            private_key="priv",
            timeout_s=12.0,
            connect_timeout_s=3.5,
            method="json",
        ),
        crawl=CrawlConfig(
            projects=("org-default", "org-ml"),
            repo_types=("private",),
            repos=("web",),
            images=(("web", "api"), ("a/b", "c")),
            page_size=250,
            concurrency=7,
            rate_per_s=12.5,
            max_retries=2,
            backoff_base_s=0.1,
            backoff_cap_s=4.0,
            max_passes=3,
        ),
        output=OutputConfig(path="out.jsonl", errors="errs.jsonl"),
    )
    assert type(config.api.timeout_s) is float


def test_defaults_without_a_file() -> None:
    config = load_config(None, environ={})
    assert config == Config()
    assert config.api.endpoint == DEFAULT_ENDPOINT
    assert config.crawl.repo_types == ("private", "public")
    assert config.crawl.page_size == 100
    assert config.output == OutputConfig(path="tags.jsonl", errors="errors.jsonl")


def test_an_empty_file_gives_the_defaults(write: Write) -> None:
    assert load_config(write(""), environ={}) == Config()


def test_config_is_frozen_and_hides_the_private_key() -> None:
    config = Config(api=ApiConfig(private_key="s3cr3t-value"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.api.private_key = "other"  # type: ignore[misc]
    assert "s3cr3t-value" not in repr(config)
    assert "s3cr3t-value" not in str(config.api)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[api]\nendpoit = "http://127.0.0.1:1"\n',
            "unknown key api.endpoit (did you mean 'endpoint'?); "
            "config.example.toml lists every key",
        ),
        (
            "[crawl]\npage-size = 10\n",
            "unknown key crawl.page-size (did you mean 'page_size'?); "
            "config.example.toml lists every key",
        ),
        (
            "[crawl]\nfrobnicate = 1\n",
            "unknown key crawl.frobnicate; config.example.toml lists every key",
        ),
        (
            '[ouput]\npath = "x"\n',
            "unknown section [ouput] (did you mean 'output'?); "
            "the sections are [api], [crawl] and [output]",
        ),
        ('api = "x"\n', "[api] must be a table, not 'x'"),
    ],
)
def test_unknown_names_are_reported_with_a_suggestion(
    write: Write, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(text), environ={})
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[crawl]\npage_size = "10"\n', "crawl.page_size must be an integer, not '10'"),
        ("[crawl]\npage_size = 10.0\n", "crawl.page_size must be an integer, not 10.0"),
        (
            "[crawl]\nconcurrency = true\n",
            "crawl.concurrency must be an integer, not True",
        ),
        ('[crawl]\nrate = "fast"\n', "crawl.rate must be a number, not 'fast'"),
        ("[api]\ntimeout = false\n", "api.timeout must be a number, not False"),
        ("[api]\npublic_key = 12\n", "api.public_key must be a string, not 12"),
        # A secret is never echoed, only its type is named.
        ("[api]\nprivate_key = 12\n", "api.private_key must be a string, not an int"),
        (
            "[api]\nprivate_key = 1.5\n",
            "api.private_key must be a string, not a float",
        ),
        (
            '[api]\nprivate_key = ["k"]\n',
            "api.private_key must be a string, not a list",
        ),
        (
            '[crawl]\nprojects = "org-ml"\n',
            "crawl.projects must be a list of strings, not 'org-ml'",
        ),
        (
            "[crawl]\nrepos = [1, 2]\n",
            "crawl.repos must be a list of strings, not [1, 2]",
        ),
    ],
)
def test_wrong_types_name_the_key_and_the_value(
    write: Write, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(text), environ={})
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[crawl]\npage_size = 0\n", "crawl.page_size must be greater than 0, not 0"),
        (
            "[crawl]\npage_size = 10001\n",
            "crawl.page_size must be at most 10000, not 10001",
        ),
        (
            "[crawl]\nconcurrency = -1\n",
            "crawl.concurrency must be greater than 0, not -1",
        ),
        ("[crawl]\nrate = -1\n", "crawl.rate must be 0 or more, not -1.0"),
        ("[crawl]\nrate = inf\n", "crawl.rate must be 0 or more, not inf"),
        ("[api]\ntimeout = 0\n", "api.timeout must be greater than 0, not 0.0"),
        (
            '[api]\nmethod = "put"\n',
            "api.method must be one of get, form, json, not 'put'",
        ),
        (
            '[api]\nendpoint = "ftp://127.0.0.1"\n',
            "api.endpoint 'ftp://127.0.0.1' is not an http(s) URL; "
            "write it like 'https://api.example.com' "
            "(in the config, CRAWLER_ENDPOINT or --endpoint)",
        ),
        (
            '[api]\nendpoint = "http://127.0.0.1:99999"\n',
            "api.endpoint 'http://127.0.0.1:99999' is not an http(s) URL; "
            "write it like 'https://api.example.com' "
            "(in the config, CRAWLER_ENDPOINT or --endpoint)",
        ),
        (
            '[api]\nendpoint = "http://127.0.0.1/?a=1"\n',
            "api.endpoint 'http://127.0.0.1/?a=1' must not carry a query or fragment",
        ),
        (
            '[crawl]\nrepo_types = ["secret"]\n',
            "crawl.repo_types entries must be 'private' or 'public', not 'secret'",
        ),
        (
            "[crawl]\nrepo_types = []\n",
            "crawl.repo_types is empty; list 'private', 'public'",
        ),
        (
            '[crawl]\nimages = ["api"]\n',
            "crawl.images entry 'api' must be 'repository/image', e.g. 'platform/api'",
        ),
        (
            '[output]\npath = ""\n',
            "output.path and output.errors must not be empty",
        ),
    ],
)
def test_values_that_cannot_work(write: Write, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(text), environ={})
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("path", "errors"),
    [
        ("out.jsonl", "out.jsonl"),
        ("out.jsonl", "out.jsonl.part"),
        ("out.jsonl", "out.jsonl.checkpoint"),
        ("out.jsonl", "out.jsonl.lock"),
        ("./out.jsonl", "out.jsonl.part"),  # one file, however it is spelt
    ],
    ids=["export", "part", "checkpoint", "lock", "spelt-differently"],
)
def test_the_errors_file_must_not_be_one_of_the_exports_files(
    write: Write, path: str, errors: str
) -> None:
    text = f'[output]\npath = "{path}"\nerrors = "{errors}"\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(text), environ={})
    assert str(info.value) == (
        f"output.errors {errors!r} and output.path {path!r} would write the "
        "same files; choose another --errors"
    )


@pytest.mark.parametrize("path", ["out.jsonl", "-"])
def test_the_errors_file_must_not_be_stdout(write: Write, path: str) -> None:
    text = f'[output]\npath = "{path}"\nerrors = "-"\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(text), environ={})
    assert str(info.value) == "output.errors must be a file, not standard output"


def test_the_errors_file_beside_the_export_is_fine(write: Write) -> None:
    text = '[output]\npath = "out.jsonl"\nerrors = "out.jsonl.errors"\n'
    config = load_config(write(text), environ={})
    assert config.output == OutputConfig(path="out.jsonl", errors="out.jsonl.errors")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value) == (
        f"config file {str(path)!r} does not exist; "
        "copy config.example.toml and edit it"
    )


def test_invalid_toml(write: Write) -> None:
    path = write("[api\nendpoint = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert message.startswith(f"config file {str(path)!r} is not valid TOML: ")
    assert "\n" not in message


def test_config_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[api]\npublic_key = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value).startswith(f"config file {str(path)!r} is not valid TOML: ")


def test_a_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={})
    assert str(info.value).startswith(f"cannot read config file {str(tmp_path)!r}: ")


@pytest.mark.parametrize(
    ("api", "message"),
    [
        (
            {},
            "api.public_key is not set; put it in the config file's [api] table "
            "or export CRAWLER_PUBLIC_KEY",
        ),
        (
            {"public_key": "pub"},
            "api.private_key is not set; put it in the config file's [api] table "
            "or export CRAWLER_PRIVATE_KEY",
        ),
        (
            {"private_key": "priv"},
            "api.public_key is not set; put it in the config file's [api] table "
            "or export CRAWLER_PUBLIC_KEY",
        ),
        # Whitespace alone is no key.
        (
            {"public_key": "  ", "private_key": "priv"},
            "api.public_key is not set; put it in the config file's [api] table "
            "or export CRAWLER_PUBLIC_KEY",
        ),
        (
            {"public_key": "pub", "private_key": "\t\n"},
            "api.private_key is not set; put it in the config file's [api] table "
            "or export CRAWLER_PRIVATE_KEY",
        ),
    ],
)
def test_missing_keys(api: dict[str, str], message: str) -> None:
    config = Config(api=ApiConfig(endpoint="http://127.0.0.1:9", **api))
    with pytest.raises(ConfigError) as info:
        require_keys(config)
    assert str(info.value) == message
    with pytest.raises(ConfigError) as info:
        TagCrawler(config)
    assert str(info.value) == message


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Config().replace(crawl={"page_size": 0})


def test_replace_validates_and_keeps_the_rest() -> None:
    config = Config(api=ApiConfig(endpoint="http://127.0.0.1:9", public_key="p"))
    changed = config.replace(crawl={"page_size": 7}, api={"method": "form"})
    assert changed.crawl.page_size == 7
    assert changed.api == ApiConfig(
        endpoint="http://127.0.0.1:9", public_key="p", method="form"
    )
    assert config.crawl.page_size == 100  # the original is untouched


# ---------------------------------------------------------------- precedence

FILE_ENDPOINT = "http://127.0.0.1:7001"
ENV_ENDPOINT = "http://127.0.0.1:7002"
CLI_ENDPOINT = "http://127.0.0.1:7003"

LAYERED = f"""\
[api]
endpoint = "{FILE_ENDPOINT}"
public_key = "file-pub"
private_key = "file-priv"

[crawl]
page_size = 40
concurrency = 5
rate = 9
projects = ["from-file"]

[output]
path = "file.jsonl"
"""


def test_environment_beats_the_file(write: Write) -> None:
    environ = {
        "CRAWLER_ENDPOINT": ENV_ENDPOINT,
        "CRAWLER_PUBLIC_KEY": "env-pub",
        "CRAWLER_PRIVATE_KEY": "env-priv",
    }
    config = load_config(write(LAYERED), environ=environ)
    assert config.api == ApiConfig(
        endpoint=ENV_ENDPOINT, public_key="env-pub", private_key="env-priv"
    )
    assert config.crawl.page_size == 40  # the environment does not touch it


def test_empty_environment_values_are_ignored(write: Write) -> None:
    environ = {"CRAWLER_ENDPOINT": "", "CRAWLER_PRIVATE_KEY": ""}
    config = load_config(write(LAYERED), environ=environ)
    assert config.api.endpoint == FILE_ENDPOINT
    assert config.api.private_key == "file-priv"


def test_keys_from_the_environment_alone() -> None:
    environ = {"CRAWLER_PUBLIC_KEY": "env-pub", "CRAWLER_PRIVATE_KEY": "env-priv"}
    config = load_config(None, environ=environ)
    assert (config.api.public_key, config.api.private_key) == ("env-pub", "env-priv")
    require_keys(config)


def test_a_bad_environment_endpoint_is_reported() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"CRAWLER_ENDPOINT": "127.0.0.1:8080"})
    assert str(info.value) == (
        "api.endpoint '127.0.0.1:8080' is not an http(s) URL; "
        "write it like 'https://api.example.com' "
        "(in the config, CRAWLER_ENDPOINT or --endpoint)"
    )


def test_command_line_beats_environment_beats_file(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(LAYERED)
    monkeypatch.setenv("CRAWLER_ENDPOINT", ENV_ENDPOINT)
    monkeypatch.setenv("CRAWLER_PRIVATE_KEY", "env-priv")
    args = build_parser().parse_args(
        [
            "crawl",
            "--config",
            str(path),
            "--endpoint",
            CLI_ENDPOINT,
            "--page-size",
            "17",
            "--rate",
            "0",
            "--project",
            "a",
            "--project",
            "b",
            "--out",
            "cli.jsonl",
        ]
    )
    config = _configure(args)
    assert config.api == ApiConfig(
        endpoint=CLI_ENDPOINT, public_key="file-pub", private_key="env-priv"
    )
    assert config.crawl.page_size == 17  # command line over file
    assert config.crawl.concurrency == 5  # file over default
    assert config.crawl.rate_per_s == 0.0  # 0 on the command line is kept
    assert config.crawl.projects == ("a", "b")
    assert config.output == OutputConfig(path="cli.jsonl", errors="errors.jsonl")


def test_without_command_line_options_the_environment_wins(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(LAYERED)
    monkeypatch.setenv("CRAWLER_ENDPOINT", ENV_ENDPOINT)
    config = _configure(build_parser().parse_args(["crawl", "--config", str(path)]))
    assert config.api.endpoint == ENV_ENDPOINT
    assert config.crawl.projects == ("from-file",)
    assert config.crawl.rate_per_s == 9.0
    assert config.output.path == "file.jsonl"


def test_command_line_values_are_validated(write: Write) -> None:
    path = write(LAYERED)
    args = build_parser().parse_args(
        ["crawl", "--config", str(path), "--page-size", "20000"]
    )
    with pytest.raises(ConfigError) as info:
        _configure(args)
    assert str(info.value) == "crawl.page_size must be at most 10000, not 20000"
