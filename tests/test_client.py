"""The API client: one signed exchange, and the retry policy around it.

The HTTP session is replaced by a scripted stand-in that answers each request
with the next scripted reply and records what was sent, so every RetCode,
status and header can be played without a server (aioresponses, the usual
tool for this, cannot build responses for aiohttp 3.14).  ``asyncio.sleep`` is
replaced by a recorder, so backoff and Retry-After waits are asserted as
values and cost no time.
"""

from __future__ import annotations

import asyncio
import email.utils
import types
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.client_reqrep import ConnectionKey

import crawler._client
from crawler import (
    ApiConfig,
    ApiError,
    AuthError,
    CrawlConfig,
    EndpointError,
    FatalError,
    ProjectError,
    RequestTimeoutError,
    TargetError,
    ThrottledError,
    TransientError,
    sign,
)
from crawler._client import ApiClient, parse_retry_after
from crawler._crawl import _to_tags
from crawler._models import ImageRef, Tag
from crawler._throttle import AdaptiveRate

ENDPOINT = "http://127.0.0.1:9"

_real_sleep = asyncio.sleep  # the stand-in session yields with it, unrecorded

# The example response of the API reference, byte for byte as documented.
DOCUMENTED_EXAMPLE = (
    b'{"Action": "GetImageTagResponse", "RetCode": 0, "TagSet": [{"Digest": '
    b'"VzEacruq", "TagName": "OLlvXCrO", "UpdateTime": "CTydYXMK"}], '
    b'"TotalCount": 5}'
)


@dataclass
class Reply:
    """One scripted HTTP answer; ``hang`` never finishes the body."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


def answer(ret_code: int = 0, status: int = 200, **payload: Any) -> Reply:
    doc = {"RetCode": ret_code, "Action": "GetImageTagResponse", **payload}
    if ret_code and "Message" not in payload:
        doc["Message"] = f"failure {ret_code}"
    return Reply(status=status, body=orjson.dumps(doc))


OK = answer(TotalCount=0, TagSet=[])


def html(status: int, title: str = "Bad Gateway") -> Reply:
    body = f"<html><head><title>{status} {title}</title></head><body></body></html>"
    return Reply(status=status, body=body.encode())


def connect_refused() -> aiohttp.ClientConnectorError:
    key = ConnectionKey("127.0.0.1", 9, False, True, None, None, None)
    return aiohttp.ClientConnectorError(key, OSError(111, "Connection refused"))


@dataclass
class Sent:
    method: str
    url: str
    data: Any
    headers: dict[str, str] | None


class _Response:
    def __init__(self, reply: Reply) -> None:
        self.status = reply.status
        self.headers = reply.headers
        self.content_length = len(reply.body)
        self._reply = reply

    async def read(self) -> bytes:
        if self._reply.hang:
            await asyncio.Event().wait()
        return self._reply.body


class _Pending:
    def __init__(self, session: FakeSession) -> None:
        self._session = session

    async def __aenter__(self) -> _Response:
        session = self._session
        session.in_flight += 1
        session.most_in_flight = max(session.most_in_flight, session.in_flight)
        try:
            await _real_sleep(0)  # let other callers in, as a real exchange would
            item = session.next_item()
            if isinstance(item, BaseException):
                raise item
            return _Response(item)
        finally:
            session.in_flight -= 1

    async def __aexit__(self, *exc_info: object) -> None:
        return None


class FakeSession:
    """Stands in for ``aiohttp.ClientSession``; the last scripted item repeats."""

    def __init__(self, script: list[Reply | BaseException]) -> None:
        self.script = list(script)
        self.sent: list[Sent] = []
        self.in_flight = 0
        self.most_in_flight = 0

    def next_item(self) -> Reply | BaseException:
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def get(self, url: object, **kwargs: Any) -> _Pending:
        self.sent.append(Sent("GET", str(url), None, kwargs.get("headers")))
        return _Pending(self)

    def post(
        self,
        url: object,
        data: Any = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> _Pending:
        self.sent.append(Sent("POST", str(url), data, headers))
        return _Pending(self)

    async def close(self) -> None:
        return None


MakeClient = Callable[..., tuple[ApiClient, FakeSession]]


@pytest.fixture
def make_client() -> MakeClient:
    """``make_client(script, **crawl fields, api=dict)`` -> client, session."""

    def make(
        script: list[Reply | BaseException],
        api: dict[str, Any] | None = None,
        **crawl: Any,
    ) -> tuple[ApiClient, FakeSession]:
        api_fields = {
            "endpoint": ENDPOINT,
            "public_key": "pub-key",
            "private_key": "priv-key",
            **(api or {}),
        }
        api_config = ApiConfig(**api_fields)
        crawl_config = CrawlConfig(
            **{"rate_per_s": 0.0, "backoff_base_s": 0.5, "backoff_cap_s": 4.0, **crawl}
        )
        client = ApiClient(api_config, crawl_config)
        session = FakeSession(script)
        client._session = session  # type: ignore[assignment]
        return client, session

    return make


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every ``asyncio.sleep`` delay, recorded instead of waited for."""
    recorded: list[float] = []

    async def fake_sleep(delay: float, result: Any = None) -> Any:
        recorded.append(delay)
        return await _real_sleep(0, result)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    return recorded


@pytest.fixture
def ceilings(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[float, float]]]:
    """Make the jitter pick the top of its range, and record each range."""
    ranges: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        ranges.append((low, high))
        return high

    fake_random = types.SimpleNamespace(uniform=uniform)
    monkeypatch.setattr(crawler._client, "random", fake_random)
    yield ranges


PARAMS = {"RepoName": "web", "ImageName": "api", "Offset": 0, "Limit": 100}


async def call(client: ApiClient, expect: str | None = "TagSet") -> dict[str, Any]:
    return await client.call("GetImageTag", PARAMS, expect=expect)


# ---------------------------------------------------------------- success


async def test_documented_example_response(
    make_client: MakeClient, sleeps: list[float]
) -> None:
    client, session = make_client([Reply(body=DOCUMENTED_EXAMPLE)])
    doc = await call(client)
    assert doc == {
        "Action": "GetImageTagResponse",
        "RetCode": 0,
        "TagSet": [
            {"Digest": "VzEacruq", "TagName": "OLlvXCrO", "UpdateTime": "CTydYXMK"}
        ],
        "TotalCount": 5,
    }
    assert _to_tags(ImageRef("org-ml", "web", "api"), doc["TagSet"]) == [
        Tag("org-ml", "web", "api", "OLlvXCrO", "VzEacruq", "CTydYXMK")
    ]
    assert (client.stats.requests, client.stats.retries) == (1, 0)
    assert len(session.sent) == 1
    assert sleeps == []


@pytest.mark.parametrize("method", ["get", "form", "json"])
async def test_requests_are_signed_over_every_parameter(
    make_client: MakeClient, method: str
) -> None:
    client, session = make_client([OK], api={"method": method})
    params = {"RepoName": "team+core&x=y", "ImageName": "img name/ü", "Limit": 10}
    await client.call("GetImageTag", params)
    (sent,) = session.sent
    expected: dict[str, object] = {
        "Action": "GetImageTag",
        **params,
        "PublicKey": "pub-key",
    }
    expected["Signature"] = sign(expected, "priv-key")
    if method == "get":
        assert sent.method == "GET"
        url, _, query = sent.url.partition("?")
        assert url == ENDPOINT + "/"
        # Every reserved character is escaped, a space as %20.
        assert "RepoName=team%2Bcore%26x%3Dy" in query.split("&")
        assert "ImageName=img%20name%2F%C3%BC" in query.split("&")
        received = dict(urllib.parse.parse_qsl(query, strict_parsing=True))
        assert received == {name: str(value) for name, value in expected.items()}
    elif method == "form":
        assert (sent.method, sent.url) == ("POST", ENDPOINT + "/")
        assert sent.headers == {"Content-Type": "application/x-www-form-urlencoded"}
        received = dict(urllib.parse.parse_qsl(sent.data, strict_parsing=True))
        assert received == {name: str(value) for name, value in expected.items()}
    else:
        assert (sent.method, sent.url) == ("POST", ENDPOINT + "/")
        assert sent.headers == {"Content-Type": "application/json"}
        assert orjson.loads(sent.data) == expected  # Limit stays a number


async def test_an_endpoint_path_is_kept(make_client: MakeClient) -> None:
    client, session = make_client([OK], api={"endpoint": ENDPOINT + "/api/v1"})
    await call(client)
    assert session.sent[0].url.startswith(ENDPOINT + "/api/v1?Action=GetImageTag&")


async def test_concurrency_bounds_requests_in_flight(make_client: MakeClient) -> None:
    client, session = make_client([OK], concurrency=3)
    await asyncio.gather(*(call(client) for _ in range(20)))
    assert session.most_in_flight == 3
    assert client.stats.requests == 20


# ---------------------------------------------------------------- RetCodes


@pytest.mark.parametrize("ret_code", [110, 130, 150, 2001, 5000, 65535])
async def test_transient_ret_codes_are_retried(
    make_client: MakeClient, sleeps: list[float], ret_code: int
) -> None:
    client, session = make_client([answer(ret_code), answer(ret_code), OK])
    assert await call(client) == orjson.loads(OK.body)
    assert len(session.sent) == 3
    assert (client.stats.requests, client.stats.retries) == (3, 2)
    assert client.stats.throttled == 0
    assert len(sleeps) == 2
    assert all(0 <= delay <= 4.0 for delay in sleeps)


async def test_ret_code_153_throttles_and_retries(
    make_client: MakeClient, sleeps: list[float]
) -> None:
    client, session = make_client([answer(153), OK], max_retries=0)
    assert await call(client) == orjson.loads(OK.body)
    assert len(session.sent) == 2
    # A throttling answer is counted as throttled, not as a retry after a fault.
    assert client.stats.throttled == 1
    assert client.stats.retries == 0


# What each refusal of the keys adds to the server's message.
AUTH_HINTS = {
    170: "",
    171: " (the private key does not fit the public key: check api.private_key "
    "or CRAWLER_PRIVATE_KEY)",
    172: " (the public key is unknown: check api.public_key or CRAWLER_PUBLIC_KEY)",
    173: "",
    174: " (the token is unknown: check the account's keys)",
}


@pytest.mark.parametrize("ret_code", [170, 171, 172, 173, 174])
async def test_auth_ret_codes_stop_at_once(
    make_client: MakeClient, sleeps: list[float], ret_code: int
) -> None:
    client, session = make_client([answer(ret_code, Message="keys refused"), OK])
    with pytest.raises(AuthError) as info:
        await call(client)
    exc = info.value
    assert isinstance(exc, FatalError)
    assert (exc.ret_code, exc.http_status) == (ret_code, None)
    assert exc.action == "GetImageTag"
    assert exc.message == "keys refused" + AUTH_HINTS[ret_code]
    assert str(exc) == (
        f"GetImageTag: RetCode {ret_code}: keys refused{AUTH_HINTS[ret_code]}"
    )
    assert exc.attempts == 1
    assert exc.params == PARAMS
    assert len(session.sent) == 1
    assert sleeps == []


@pytest.mark.parametrize("ret_code", [160, 161])
async def test_protocol_ret_codes_are_fatal(
    make_client: MakeClient, ret_code: int
) -> None:
    client, session = make_client([answer(ret_code)])
    with pytest.raises(FatalError) as info:
        await call(client)
    assert not isinstance(info.value, AuthError)
    assert info.value.ret_code == ret_code
    assert len(session.sent) == 1


@pytest.mark.parametrize("ret_code", range(292, 300))
async def test_project_ret_codes_fail_the_project(
    make_client: MakeClient, sleeps: list[float], ret_code: int
) -> None:
    client, session = make_client([answer(ret_code, Message="denied"), OK])
    with pytest.raises(ProjectError) as info:
        await call(client)
    assert info.value.ret_code == ret_code
    assert info.value.attempts == 1
    assert len(session.sent) == 1
    assert sleeps == []


@pytest.mark.parametrize("ret_code", [1, 100, 230, 231, 240, 291, 300, 2000])
async def test_other_ret_codes_fail_the_target(
    make_client: MakeClient, sleeps: list[float], ret_code: int
) -> None:
    client, session = make_client([answer(ret_code, Message="no such image"), OK])
    with pytest.raises(TargetError) as info:
        await call(client)
    exc = info.value
    assert (exc.ret_code, exc.message, exc.attempts) == (ret_code, "no such image", 1)
    assert exc.params == PARAMS
    assert "Signature" not in exc.params
    assert len(session.sent) == 1
    assert sleeps == []


# ---------------------------------------------------------------- HTTP statuses


@pytest.mark.parametrize("status", [408, 425, 500, 502, 503, 504, 599])
async def test_transient_statuses_are_retried(
    make_client: MakeClient, sleeps: list[float], status: int
) -> None:
    client, session = make_client([html(status), OK])
    assert await call(client) == orjson.loads(OK.body)
    assert len(session.sent) == 2
    assert (client.stats.retries, client.stats.throttled) == (1, 0)


async def test_status_429_throttles(
    make_client: MakeClient, sleeps: list[float]
) -> None:
    client, _ = make_client([Reply(status=429, body=b"slow down"), OK])
    assert await call(client) == orjson.loads(OK.body)
    assert (client.stats.retries, client.stats.throttled) == (0, 1)


@pytest.mark.parametrize("status", [400, 403, 404])
async def test_other_statuses_fail_the_target_once_the_api_answered(
    make_client: MakeClient, sleeps: list[float], status: int
) -> None:
    client, session = make_client([OK, html(status, "Nope"), OK])
    await call(client)
    with pytest.raises(TargetError) as info:
        await call(client)
    exc = info.value
    assert (exc.http_status, exc.ret_code, exc.attempts) == (status, None, 1)
    assert exc.message == (
        f"<html><head><title>{status} Nope</title></head><body></body></html>"
    )
    assert len(session.sent) == 2


async def test_a_404_before_any_answer_means_a_wrong_endpoint(
    make_client: MakeClient,
) -> None:
    client, session = make_client([html(404, "Not Found")])
    with pytest.raises(EndpointError) as info:
        await call(client)
    assert isinstance(info.value, ConnectionError)
    assert info.value.http_status == 404
    assert str(info.value) == (
        f"GetImageTag: HTTP 404: cannot use {ENDPOINT}: it answered HTTP 404; "
        "check api.endpoint, CRAWLER_ENDPOINT or --endpoint"
    )
    assert len(session.sent) == 1


async def test_an_error_status_with_an_api_message_keeps_it(
    make_client: MakeClient, sleeps: list[float]
) -> None:
    client, _ = make_client([answer(150, status=503, Message="busy")], max_retries=0)
    with pytest.raises(TransientError) as info:
        await call(client)
    assert str(info.value) == "GetImageTag: HTTP 503: busy"


# ---------------------------------------------------------------- giving up


async def test_gives_up_after_max_retries(
    make_client: MakeClient, sleeps: list[float]
) -> None:
    client, session = make_client([html(502)], max_retries=3)
    with pytest.raises(TransientError) as info:
        await call(client)
    exc = info.value
    assert type(exc) is TransientError
    assert (exc.http_status, exc.attempts) == (502, 4)
    assert exc.params == PARAMS
    assert len(session.sent) == 4
    assert (client.stats.requests, client.stats.retries) == (4, 3)
    assert len(sleeps) == 3


async def test_max_retries_zero_means_one_attempt(make_client: MakeClient) -> None:
    client, session = make_client([answer(150)], max_retries=0)
    with pytest.raises(TransientError) as info:
        await call(client)
    assert info.value.attempts == 1
    assert len(session.sent) == 1


async def test_throttling_does_not_use_up_the_retries(
    make_client: MakeClient, sleeps: list[float]
) -> None:
    script = [answer(153), Reply(status=429), answer(153), html(503), OK]
    client, session = make_client(script, max_retries=1)
    assert await call(client) == orjson.loads(OK.body)
    assert len(session.sent) == 5
    assert client.stats.throttled == 3
    assert client.stats.retries == 1  # the 503 alone


async def test_endless_throttling_ends(
    make_client: MakeClient, sleeps: list[float]
) -> None:
    # A rate so high that even slowed down 64-fold it never makes the test
    # wait: only the count of throttling answers is under test.
    client, session = make_client([answer(153)], rate_per_s=1e9)
    with pytest.raises(ThrottledError) as info:
        await call(client)
    # 200 throttling answers are waited out; the 201st gives up.
    assert info.value.attempts == 201
    assert len(session.sent) == 201
    assert client.stats.throttled == 201


# ---------------------------------------------------------------- backoff


async def test_backoff_is_exponential_with_full_jitter_and_capped(
    make_client: MakeClient,
    sleeps: list[float],
    ceilings: list[tuple[float, float]],
) -> None:
    client, _ = make_client(
        [answer(150)] * 6 + [OK], backoff_base_s=0.25, backoff_cap_s=1.5
    )
    await call(client)
    assert ceilings == [(0, 0.25), (0, 0.5), (0, 1.0), (0, 1.5), (0, 1.5), (0, 1.5)]
    assert sleeps == [0.25, 0.5, 1.0, 1.5, 1.5, 1.5]


# ---------------------------------------------------------------- Retry-After

NOW = 1_800_000_000.0


def http_date(epoch_s: float) -> str:
    return email.utils.formatdate(epoch_s, usegmt=True)


@pytest.fixture
def frozen_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wall-clock time stands still at NOW for Retry-After dates."""
    clock = types.SimpleNamespace(time=lambda: NOW, monotonic=lambda: 0.0)
    monkeypatch.setattr(crawler._client, "time", clock)


@pytest.mark.parametrize(
    ("header", "delay_s"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        (http_date(NOW + 120), 120.0),
        ("86400000", 300.0),  # absurd: cut to five minutes
        ("1e400", 300.0),
    ],
)
@pytest.mark.parametrize("first", [Reply(status=429), answer(153)], ids=["429", "153"])
async def test_retry_after_is_honoured_when_throttled(
    make_client: MakeClient,
    sleeps: list[float],
    frozen_time: None,
    first: Reply,
    header: str,
    delay_s: float,
) -> None:
    throttled = Reply(first.status, first.body, {"Retry-After": header})
    client, _ = make_client([throttled, OK], backoff_base_s=100.0)
    await call(client)
    assert sleeps[0] == delay_s


async def test_retry_after_on_a_503_is_honoured(
    make_client: MakeClient, sleeps: list[float]
) -> None:
    client, _ = make_client(
        [Reply(503, b"busy", {"Retry-After": "3"}), OK], backoff_base_s=100.0
    )
    await call(client)
    assert sleeps == [3.0]


@pytest.mark.parametrize(
    "header",
    [http_date(NOW - 30), "soon", "-5", "0", "nan", "", "Fri, 99 Foo 2026 xx"],
    ids=["past-date", "word", "negative", "zero", "nan", "empty", "broken-date"],
)
async def test_unusable_retry_after_falls_back_to_backoff(
    make_client: MakeClient,
    sleeps: list[float],
    ceilings: list[tuple[float, float]],
    frozen_time: None,
    header: str,
) -> None:
    client, _ = make_client(
        [Reply(429, b"", {"Retry-After": header}), OK],
        backoff_base_s=0.75,
        backoff_cap_s=10.0,
    )
    await call(client)
    assert ceilings == [(0, 0.75)]
    assert sleeps[0] == 0.75


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        ("0.5", 0.5),
        (http_date(NOW + 45), 45.0),
        ("Thu, 15 Jan 2027 08:01:00 +0000", 60.0),
        ("299.9", 299.9),
        ("301", 300.0),
        ("inf", 300.0),
        (http_date(NOW - 1), None),
        (http_date(NOW), None),
        ("-1", None),
        ("0", None),
        ("NaN", None),
        ("tomorrow", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


@pytest.mark.parametrize(
    "header",
    [
        "Thursday, 15-Jan-27 08:01:00 GMT",  # RFC 850, obsolete but valid
        "Thu Jan 15 08:01:00 2027",  # asctime, obsolete but valid
    ],
    ids=["rfc850", "asctime"],
)
def test_parse_retry_after_obsolete_http_dates(header: str) -> None:
    # HTTP recipients must accept all three date formats (RFC 9110, 5.6.7);
    # all are in UTC.
    assert parse_retry_after(header, now=NOW) == 60.0


# ---------------------------------------------------------------- bad answers


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b"<html><body><h1>Internal Server Error</h1></body></html>",
            "answer is not an API response: "
            "'<html><body><h1>Internal Server Error</h1></body></html>'",
        ),
        (b"", "answer is not an API response: 'empty body'"),
        (b"[1, 2]", "answer is not an API response: '[1, 2]'"),
        (b'{"RetCode": "0"}', 'answer is not an API response: \'{"RetCode": "0"}\''),
        (
            b'{"Message": "hi"}',
            'answer is not an API response: \'{"Message": "hi"}\'',
        ),
        (
            b'{"RetCode": 0, "TotalCount": 3}',
            'answer lacks TotalCount or TagSet: \'{"RetCode": 0, "TotalCount": 3}\'',
        ),
        (
            b'{"RetCode": 0, "TotalCount": "3", "TagSet": []}',
            "answer lacks TotalCount or TagSet: "
            '\'{"RetCode": 0, "TotalCount": "3", "TagSet": []}\'',
        ),
        (
            b'{"RetCode": 0, "TotalCount": 3, "TagSet": null}',
            "answer lacks TotalCount or TagSet: "
            '\'{"RetCode": 0, "TotalCount": 3, "TagSet": null}\'',
        ),
    ],
    ids=[
        "html",
        "empty",
        "list",
        "string-retcode",
        "no-retcode",
        "no-set",
        "str-total",
        "null-set",
    ],
)
async def test_malformed_answers_are_transient(
    make_client: MakeClient, sleeps: list[float], body: bytes, message: str
) -> None:
    client, session = make_client([Reply(body=body)], max_retries=2)
    with pytest.raises(TransientError) as info:
        await call(client)
    assert info.value.message == message
    assert info.value.attempts == 3
    assert len(session.sent) == 3


async def test_malformed_answer_then_good_one(
    make_client: MakeClient, sleeps: list[float]
) -> None:
    client, _ = make_client([Reply(body=b"<html>oops</html>"), OK])
    assert await call(client) == orjson.loads(OK.body)
    assert client.stats.retries == 1


async def test_without_expect_any_api_answer_will_do(make_client: MakeClient) -> None:
    client, _ = make_client([Reply(body=b'{"RetCode": 0}')])
    assert await call(client, expect=None) == {"RetCode": 0}


# ---------------------------------------------------------------- the network


async def test_connection_errors_are_retried_after_a_success(
    make_client: MakeClient, sleeps: list[float]
) -> None:
    script: list[Reply | BaseException] = [
        OK,
        connect_refused(),
        aiohttp.ServerDisconnectedError(),
        connect_refused(),
        connect_refused(),
        OK,
    ]
    client, session = make_client(script)
    await call(client)
    assert await call(client) == orjson.loads(OK.body)
    assert len(session.sent) == 6
    assert client.stats.retries == 4


async def test_an_endpoint_that_never_answers_fails_fast(
    make_client: MakeClient, sleeps: list[float]
) -> None:
    client, session = make_client([connect_refused()], max_retries=8)
    with pytest.raises(EndpointError) as info:
        await call(client)
    assert len(session.sent) == 3
    assert str(info.value) == (
        f"GetImageTag: cannot connect to {ENDPOINT}: Connection refused; "
        "check api.endpoint, CRAWLER_ENDPOINT or --endpoint"
    )


NOT_THE_API = b"<html><body>Welcome to nginx!</body></html>"


async def test_answers_that_are_not_the_api_mean_a_wrong_endpoint(
    make_client: MakeClient, sleeps: list[float]
) -> None:
    # Before any call has succeeded, 8 answers that are not the API's stop the
    # crawl, however many retries one call may have.
    client, session = make_client([Reply(body=NOT_THE_API)], max_retries=20)
    with pytest.raises(EndpointError) as info:
        await call(client)
    assert isinstance(info.value, ConnectionError)
    assert info.value.http_status is None
    assert str(info.value) == (
        f"GetImageTag: cannot use {ENDPOINT}: answer is not an API response: "
        f"{NOT_THE_API.decode()!r}; check api.endpoint, CRAWLER_ENDPOINT or "
        "--endpoint"
    )
    assert len(session.sent) == 8
    assert (client.stats.requests, client.stats.retries) == (8, 7)


async def test_answers_that_are_not_the_api_are_counted_over_all_calls(
    make_client: MakeClient, sleeps: list[float]
) -> None:
    client, session = make_client([Reply(body=NOT_THE_API)], max_retries=4)
    with pytest.raises(TransientError) as first:
        await call(client)
    assert type(first.value) is TransientError
    assert first.value.attempts == 5
    with pytest.raises(EndpointError) as second:
        await call(client)
    assert str(second.value) == (
        f"GetImageTag: cannot use {ENDPOINT}: answer is not an API response: "
        f"{NOT_THE_API.decode()!r}; check api.endpoint, CRAWLER_ENDPOINT or "
        "--endpoint"
    )
    assert len(session.sent) == 8  # 5 + 3


async def test_answers_that_never_come_mean_a_wrong_endpoint(
    make_client: MakeClient,
) -> None:
    # A tiny real timeout: the wait is 8 x 20 ms.
    client, session = make_client(
        [Reply(hang=True)], api={"timeout_s": 0.02}, max_retries=20, backoff_base_s=0
    )
    with pytest.raises(EndpointError) as info:
        await call(client)
    assert str(info.value) == (
        f"GetImageTag: cannot use {ENDPOINT}: no complete answer within 0.02s; "
        "check api.endpoint, CRAWLER_ENDPOINT or --endpoint"
    )
    assert len(session.sent) == 8


async def test_answers_that_are_not_the_api_after_a_success_are_retried(
    make_client: MakeClient, sleeps: list[float]
) -> None:
    client, session = make_client([OK, Reply(body=NOT_THE_API)], max_retries=20)
    await call(client)
    with pytest.raises(TransientError) as info:
        await call(client)
    assert type(info.value) is TransientError
    assert info.value.message == (
        f"answer is not an API response: {NOT_THE_API.decode()!r}"
    )
    assert info.value.attempts == 21
    assert len(session.sent) == 22


async def test_server_faults_before_any_success_are_not_a_wrong_endpoint(
    make_client: MakeClient, sleeps: list[float]
) -> None:
    # A 503 with an HTML page is the server's bad moment, not a sign of a
    # wrong endpoint: the call is retried as often as it may be.
    client, session = make_client([html(503, "Service Unavailable")], max_retries=20)
    with pytest.raises(TransientError) as info:
        await call(client)
    assert type(info.value) is TransientError
    assert (info.value.http_status, info.value.attempts) == (503, 21)
    assert len(session.sent) == 21


async def test_a_dropped_connection_is_transient(
    make_client: MakeClient, sleeps: list[float]
) -> None:
    client, _ = make_client([aiohttp.ServerDisconnectedError()], max_retries=1)
    with pytest.raises(TransientError) as info:
        await call(client)
    assert info.value.message == "ServerDisconnectedError: Server disconnected"
    assert info.value.attempts == 2


async def test_a_hung_answer_times_out(make_client: MakeClient) -> None:
    # A tiny real timeout: the wait is 2 x 20 ms.
    client, session = make_client(
        [Reply(hang=True)], api={"timeout_s": 0.02}, max_retries=1, backoff_base_s=0
    )
    with pytest.raises(RequestTimeoutError) as info:
        await call(client)
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, TransientError)
    assert info.value.message == "no complete answer within 0.02s"
    assert info.value.attempts == 2
    assert len(session.sent) == 2


async def test_a_timeout_then_an_answer(make_client: MakeClient) -> None:
    client, _ = make_client(
        [Reply(hang=True), OK], api={"timeout_s": 0.02}, backoff_base_s=0
    )
    assert await call(client) == orjson.loads(OK.body)
    assert client.stats.retries == 1


def test_api_error_text() -> None:
    by_code = ApiError("m", action="GetRepo", ret_code=171)
    by_status = ApiError("m", action="GetRepo", http_status=502)
    plain = ApiError("m", action="GetRepo")
    assert [str(by_code), str(by_status), str(plain)] == [
        "GetRepo: RetCode 171: m",
        "GetRepo: HTTP 502: m",
        "GetRepo: m",
    ]


async def test_the_retry_budget_stops_a_retry_storm(
    make_client: MakeClient, sleeps: list[float]
) -> None:
    # Retries may not exceed 50 plus a quarter of the requests made: the
    # 68th request finds 67 retries already spent against a budget of 67.
    client, session = make_client([html(503)], max_retries=1_000)
    with pytest.raises(TransientError) as info:
        await call(client)
    assert info.value.attempts == 68
    assert len(session.sent) == 68
    assert client.stats.retries == 67


# ---------------------------------------------------------------- the rate


class LoopClock:
    """Stands in for the running loop's clock; the test moves it by hand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1_000.0
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(loop, "time", lambda: self.now)


async def test_throttling_halves_the_rate_once_per_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = LoopClock(monkeypatch)
    rate = AdaptiveRate(100.0)
    assert rate.current_rate_per_s == 100.0
    rate.throttled(None)
    assert rate.current_rate_per_s == 50.0
    rate.throttled(None)  # answers to requests already in flight: no change
    clock.now += 0.4
    rate.throttled(None)
    assert rate.current_rate_per_s == 50.0
    clock.now += 0.1  # a period (0.5 s) after the last slow-down
    rate.throttled(None)
    assert rate.current_rate_per_s == 25.0
    for _ in range(20):
        clock.now += 10.0
        rate.throttled(None)
    assert rate.current_rate_per_s == 100.0 / 64  # slowed down this far at most


async def test_a_quiet_server_lets_the_rate_recover(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = LoopClock(monkeypatch)
    rate = AdaptiveRate(100.0)
    rate.throttled(None)
    rate.throttled(None)
    clock.now += 0.5
    rate.throttled(None)
    assert rate.current_rate_per_s == 25.0
    clock.now += 0.9
    rate.succeeded()  # not quiet for a second yet
    assert rate.current_rate_per_s == 25.0
    clock.now += 0.1
    rate.succeeded()
    assert rate.current_rate_per_s == pytest.approx(100.0 / (4 * 0.8))
    rate.succeeded()  # one step per quiet second, however many successes
    assert rate.current_rate_per_s == pytest.approx(100.0 / (4 * 0.8))
    for _ in range(10):
        clock.now += 1.0
        rate.succeeded()
    assert rate.current_rate_per_s == 100.0  # back to the configured rate


async def test_retry_after_pauses_every_request(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    clock = LoopClock(monkeypatch)
    rate = AdaptiveRate(0)  # no limit until the server throttles
    await rate.acquire()
    assert sleeps == []
    rate.throttled(12.0)
    # One request in the first (shortest counted) 0.25 s: a pace of 4/s,
    # halved.
    assert (rate.rate_per_s, rate.current_rate_per_s) == (4.0, 2.0)

    async def acquire_after(seconds: float) -> None:
        clock.now += seconds
        waiting = asyncio.create_task(rate.acquire())
        for _ in range(5):
            await _real_sleep(0)
        waiting.cancel()  # past the pause it waits for the bucket: enough
        await asyncio.gather(waiting, return_exceptions=True)

    await acquire_after(2.0)
    assert sleeps == [10.0]  # the rest of the server's Retry-After
    await acquire_after(10.0)
    assert sleeps == [10.0]  # the pause is over
