"""The signed API client: one HTTP exchange, and retries around it.

Layers, outermost first: ``ApiClient.call`` retries one call under the retry
policy; each attempt takes an in-flight slot and a rate token, then runs
``_exchange``, which signs, sends, reads and classifies one HTTP response.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import hashlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import TracebackType
from typing import Any, NamedTuple, Self
from urllib.parse import quote, urlsplit

import aiohttp
import orjson
from yarl import URL

from ._config import ApiConfig, CrawlConfig
from ._errors import (
    ApiError,
    CrawlerError,
    EndpointError,
    RequestTimeoutError,
    TargetError,
    ThrottledError,
    TransientError,
    classify_http_status,
    classify_ret_code,
    error_for,
)
from ._signing import format_value, sign
from ._throttle import AdaptiveRate

__all__ = ["ApiClient", "Stats", "encode_params", "parse_retry_after"]

logger = logging.getLogger(__name__)

# Retries may add at most this share of the requests made so far, plus a
# small allowance, so that a broken upstream cannot set off a retry storm.
_RETRY_BUDGET_SHARE = 0.25
_RETRY_BUDGET_FLOOR = 50
_MAX_THROTTLED_ATTEMPTS = 200  # throttling answers to one call before giving up
_MAX_RETRY_AFTER_S = 300.0  # a longer Retry-After is taken as this
# A wrong endpoint should fail fast: tries of one call whose connection is
# refused, and failed answers in all, before any call has succeeded.
_CONNECT_TRIES_BEFORE_ANY_SUCCESS = 3
_FAILURES_BEFORE_ANY_SUCCESS = 8

_MAX_BODY_BYTES = 64 << 20  # one answer, decoded
_PAGE_PARAMS = ("Offset", "Limit")
_FORM = {"Content-Type": "application/x-www-form-urlencoded"}
_JSON = {"Content-Type": "application/json"}


@dataclass(slots=True)
class Stats:
    """Counters of one crawl, read by the summary and by tests."""

    requests: int = 0
    retries: int = 0  # after faults; throttled answers are counted apart
    throttled: int = 0
    failures: int = 0
    repos: int = 0
    images: int = 0
    tags: int = 0
    repasses: int = 0
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        elapsed_s = time.monotonic() - self.started
        return {
            "repos": self.repos,
            "images": self.images,
            "tags": self.tags,
            "requests": self.requests,
            "retries": self.retries,
            "throttled": self.throttled,
            "failures": self.failures,
            "repasses": self.repasses,
            "elapsed_s": round(elapsed_s, 3),
            "requests_per_s": round(self.requests / elapsed_s, 1) if elapsed_s else 0,
        }


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, or ``None`` if unusable.

    Accepts delta-seconds and HTTP dates.  A date in the past, garbage or a
    negative number gives ``None`` (use the normal backoff); an absurdly long
    wait is cut to five minutes.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)  # asctime form
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not seconds > 0:  # also rejects NaN
        return None
    return min(seconds, _MAX_RETRY_AFTER_S)


class _PageTemplate(NamedTuple):
    """The parts of a listing's requests that do not change from page to page:
    the signing text before ``Limit``, between ``Limit`` and ``Offset`` and
    after ``Offset`` (ending in the private key), and the encoded query of
    the other parameters."""

    before_limit: str
    before_offset: str
    after_offset: str
    query: str


@lru_cache(maxsize=8192)
def _quote(text: str) -> str:
    # Names, keys and actions repeat on every page of a listing: quote each
    # distinct one once.
    return quote(text, safe="")


def encode_params(params: Mapping[str, object]) -> str:
    """Percent-encode ``params`` as a query string or form body.

    Values are rendered exactly as they were signed, then every byte outside
    the unreserved set is escaped (a space as ``%20``, ``+`` as ``%2B``), so
    the server decodes exactly what was signed.
    """
    return "&".join(
        [
            f"{_quote(name)}="
            f"{_quote(value if type(value) is str else format_value(value))}"
            for name, value in params.items()
        ]
    )


def _request_url(endpoint: str) -> str:
    return endpoint if urlsplit(endpoint).path else endpoint + "/"


class ApiClient:
    """A signed, rate-limited, retrying client for one API endpoint.

    Use as an async context manager; ``call`` is safe to use from many tasks
    at once, and never has more than ``concurrency`` requests in flight.
    """

    def __init__(
        self, api: ApiConfig, crawl: CrawlConfig, stats: Stats | None = None
    ) -> None:
        self._api = api
        self._crawl = crawl
        self.stats = stats if stats is not None else Stats()
        self.rate = AdaptiveRate(crawl.rate_per_s)
        self._url = _request_url(api.endpoint)
        self._slots = asyncio.Semaphore(crawl.concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._api_answered = False
        self._failures_before_success = 0
        # Bounded, so memory stays flat over a registry of any size.
        self._page_template = lru_cache(maxsize=1024)(self._build_page_template)

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(
            limit=self._crawl.concurrency, ttl_dns_cache=300, keepalive_timeout=30
        )
        # The read side is bounded by the per-exchange deadline in _attempt;
        # a second timer per read would only cost CPU.
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._api.connect_timeout_s
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": "crawler/0.1"},
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self, action: str, params: Mapping[str, object], expect: str | None = None
    ) -> dict[str, Any]:
        """Make one API call, retrying transient failures; return the response.

        With ``expect``, the response must also hold an integer ``TotalCount``
        and a list under that key, or the answer counts as a transient fault.

        Raises the ``ApiError`` subclass that the retry policy assigns when
        the call fails for good, with ``params`` and ``attempts`` filled in.
        """
        attempt = throttled = 0
        while True:
            attempt += 1
            try:
                return await self._attempt(action, params, expect)
            except ThrottledError as exc:
                throttled += 1
                self.stats.throttled += 1
                self.rate.throttled(exc.retry_after_s)
                if throttled > _MAX_THROTTLED_ATTEMPTS:
                    raise self._give_up(exc, params, attempt) from None
                delay_s = exc.retry_after_s or self._backoff_s(throttled)
            except TransientError as exc:
                self._check_endpoint(exc, attempt - throttled)
                if not self._may_retry(attempt - throttled):
                    raise self._give_up(exc, params, attempt) from None
                delay_s = exc.retry_after_s or self._backoff_s(attempt - throttled)
                self.stats.retries += 1
                logger.debug("retrying %s in %.2fs: %s", action, delay_s, exc)
            except ApiError as exc:
                if exc.http_status is not None:
                    self._check_endpoint(exc, attempt - throttled)
                raise self._give_up(exc, params, attempt) from None
            await asyncio.sleep(delay_s)

    def _check_endpoint(self, exc: ApiError, failures: int) -> None:
        """Stop the crawl when the endpoint is plainly wrong.

        Until the API has answered once, a refused connection, an HTTP error
        status other than a server's bad moment, or a run of answers that are
        not this API's (or no answers) mean the endpoint is wrong: retrying
        would only delay the one-line error (and, for a nightly job, the
        alarm).
        """
        if self._api_answered:
            return
        cause = exc.__cause__
        if isinstance(cause, aiohttp.ClientConnectorError) and not isinstance(
            cause, aiohttp.ClientSSLError
        ):
            if failures < _CONNECT_TRIES_BEFORE_ANY_SUCCESS:
                return
            reason = cause.os_error.strerror or str(cause.os_error)
            message = f"cannot connect to {self._api.endpoint}: {reason}"
        elif exc.http_status is not None and not isinstance(exc, TransientError):
            message = (
                f"cannot use {self._api.endpoint}: it answered HTTP {exc.http_status}"
            )
        elif (
            exc.http_status is None
            and exc.ret_code is None
            and not isinstance(cause, aiohttp.ClientError)
        ) or isinstance(cause, aiohttp.ClientSSLError):
            # Not an API answer, no answer at all, or a TLS mismatch: what a
            # wrong endpoint gives.  A server's bad moments (5xx, resets)
            # do not count.
            self._failures_before_success += 1
            if self._failures_before_success < _FAILURES_BEFORE_ANY_SUCCESS:
                return
            message = f"cannot use {self._api.endpoint}: {exc.message}"
        else:
            return
        raise EndpointError(
            f"{message}; check api.endpoint, CRAWLER_ENDPOINT or --endpoint",
            action=exc.action,
            http_status=exc.http_status,
        ) from None

    def _may_retry(self, failures: int) -> bool:
        """Whether the ``failures``-th fault of one call may be retried.

        Throttling answers have their own limit and slow the rate down; only
        retries after faults draw on the crawl's retry budget."""
        if failures > self._crawl.max_retries:
            return False
        stats = self.stats
        answered = stats.requests - stats.throttled
        budget = _RETRY_BUDGET_FLOOR + _RETRY_BUDGET_SHARE * answered
        return stats.retries < budget

    def _backoff_s(self, failures: int) -> float:
        """Exponential backoff with full jitter, capped."""
        crawl = self._crawl
        ceiling = min(crawl.backoff_cap_s, crawl.backoff_base_s * 2 ** (failures - 1))
        return random.uniform(0, ceiling)

    def _give_up(
        self, exc: ApiError, params: Mapping[str, object], attempts: int
    ) -> ApiError:
        exc.params = dict(params)
        exc.attempts = attempts
        return exc

    async def _attempt(
        self, action: str, params: Mapping[str, object], expect: str | None
    ) -> dict[str, Any]:
        async with self._slots:
            await self.rate.acquire()
            self.stats.requests += 1
            try:
                async with asyncio.timeout(self._api.timeout_s):
                    doc = await self._exchange(action, params, expect)
            except TimeoutError as exc:
                raise RequestTimeoutError(
                    f"no complete answer within {self._api.timeout_s:g}s",
                    action=action,
                ) from exc
            except aiohttp.ClientError as exc:
                raise TransientError(
                    f"{type(exc).__name__}: {exc}", action=action
                ) from exc
            except ApiError as exc:
                if exc.ret_code is not None:
                    self._api_answered = True  # a refusal, but in the API's words
                raise
        self._api_answered = True
        self.rate.succeeded()
        return doc

    def _signed(self, action: str, params: Mapping[str, object]) -> dict[str, object]:
        signed: dict[str, object] = {"Action": action, **params}
        signed["PublicKey"] = self._api.public_key
        signed["Signature"] = sign(signed, self._api.private_key)
        return signed

    def _encoded(self, action: str, params: Mapping[str, object]) -> str:
        """The signed, percent-encoded parameters of one call.

        Every page of a listing shares all parameters but Offset and Limit,
        so the sorted signing text and the encoded query around those two are
        built once per listing (``_page_template``) and reused.
        """
        offset, limit = params.get("Offset"), params.get("Limit")
        if not offset or type(offset) is not int or type(limit) is not int:
            # Most listings are one page long: a template pays off only from
            # a listing's second page on.
            return encode_params(self._signed(action, params))
        scope = tuple([item for item in params.items() if item[0] not in _PAGE_PARAMS])
        template = self._page_template(action, scope)
        offset_text, limit_text = str(offset), str(limit)
        signature = hashlib.sha1(
            f"{template.before_limit}Limit{limit_text}{template.before_offset}"
            f"Offset{offset_text}{template.after_offset}".encode()
        ).hexdigest()
        return (
            f"{template.query}&Offset={offset_text}&Limit={limit_text}"
            f"&Signature={signature}"
        )

    def _build_page_template(
        self, action: str, scope: tuple[tuple[str, object], ...]
    ) -> _PageTemplate:
        params: dict[str, object] = {
            "Action": action,
            **dict(scope),
            "PublicKey": self._api.public_key,
        }
        parts: list[list[str]] = [[], [], []]
        for name in sorted(params):
            segment = 0 if name < "Limit" else 1 if name < "Offset" else 2
            parts[segment].append(name + format_value(params[name]))
        return _PageTemplate(
            before_limit="".join(parts[0]),
            before_offset="".join(parts[1]),
            after_offset="".join(parts[2]) + self._api.private_key,
            query=encode_params(params),
        )

    async def _exchange(
        self, action: str, params: Mapping[str, object], expect: str | None
    ) -> dict[str, Any]:
        if self._session is None:
            raise CrawlerError("use the crawler as 'async with', then call it")
        method = self._api.method
        if method == "get":
            query = self._encoded(action, params)
            request = self._session.get(
                URL(f"{self._url}?{query}", encoded=True), allow_redirects=False
            )
        elif method == "form":
            body = self._encoded(action, params)
            request = self._session.post(
                self._url, data=body, headers=_FORM, allow_redirects=False
            )
        else:
            body_json = orjson.dumps(self._signed(action, params))
            request = self._session.post(
                self._url, data=body_json, headers=_JSON, allow_redirects=False
            )
        async with request as response:
            status = response.status
            length = response.content_length
            if (
                length is not None
                and length <= _MAX_BODY_BYTES
                and not (response.headers.get("Content-Encoding"))
            ):
                body_bytes = await response.read()
            else:
                body_bytes = await _read_capped(response, action)
            retry_after = response.headers.get("Retry-After")
        return _parse(action, status, body_bytes, retry_after, expect)


async def _read_capped(response: aiohttp.ClientResponse, action: str) -> bytes:
    """Read a body of unknown or compressed size, up to ``_MAX_BODY_BYTES``
    once decoded: a broken proxy or a compression bomb must not take the
    crawl's memory."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > _MAX_BODY_BYTES:
            raise TargetError(
                f"answer larger than {_MAX_BODY_BYTES >> 20} MiB; "
                "a page size of at most 10000 rows should never need that",
                action=action,
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(
    action: str,
    status: int,
    body: bytes,
    retry_after: str | None,
    expect: str | None,
) -> dict[str, Any]:
    """Turn one HTTP response into a document, or raise what it means."""
    doc: Any = None
    # Per response: a plain try is cheaper than contextlib.suppress.
    try:  # noqa: SIM105
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    if not isinstance(doc, dict):
        doc = {}
    if status != 200:
        exc = error_for(
            classify_http_status(status),
            str(doc.get("Message") or _snippet(body)),
            action=action,
            http_status=status,
        )
        exc.retry_after_s = parse_retry_after(retry_after)
        raise exc
    ret_code = doc.get("RetCode")
    if not isinstance(ret_code, int):
        raise TransientError(
            f"answer is not an API response: {_snippet(body)!r}", action=action
        )
    if ret_code != 0:
        exc = error_for(
            classify_ret_code(ret_code),
            str(doc.get("Message") or "no message"),
            action=action,
            ret_code=ret_code,
        )
        exc.retry_after_s = parse_retry_after(retry_after)
        raise exc
    if expect is not None and not (
        type(doc.get("TotalCount")) is int and type(doc.get(expect)) is list
    ):
        raise TransientError(
            f"answer lacks TotalCount or {expect}: {_snippet(body)!r}",
            action=action,
        )
    result: dict[str, Any] = doc
    return result


def _snippet(body: bytes) -> str:
    text = body[:80].decode("utf-8", "replace").strip()
    return " ".join(text.split()) or "empty body"
