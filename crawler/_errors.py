"""The exception tree, and the table that decides what each failure means.

::

    CrawlerError
    ├── ConfigError (also ValueError)      bad configuration or command line
    ├── OutputError (also OSError)         the export cannot be written
    └── ApiError                           a call failed; carries action,
        │                                  RetCode or HTTP status, message
        ├── TransientError                 worth retrying after a backoff
        │   ├── ThrottledError             the server asked us to slow down
        │   └── RequestTimeoutError (also TimeoutError)
        ├── TargetError                    this listing fails, the rest goes on
        ├── ProjectError                   the whole project fails
        └── FatalError                     no call can succeed: the crawl stops
            ├── AuthError                  the keys were refused
            └── EndpointError (also ConnectionError)  nothing answers there
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping

__all__ = [
    "ApiError",
    "AuthError",
    "ConfigError",
    "CrawlerError",
    "Disposition",
    "EndpointError",
    "FatalError",
    "OutputError",
    "ProjectError",
    "RequestTimeoutError",
    "TargetError",
    "ThrottledError",
    "TransientError",
    "classify_http_status",
    "classify_ret_code",
    "error_for",
    "first_cause",
]


class Disposition(enum.Enum):
    """What the crawl does about one failed call."""

    RETRY = "retry"  # back off, then try the same call again
    THROTTLE = "throttle"  # slow the shared rate down, then retry
    FAIL_TARGET = "fail-target"  # give up on this listing only
    FAIL_PROJECT = "fail-project"  # give up on every listing of the project
    STOP = "stop"  # the crawl cannot succeed: stop it at once


# The retry policy, one row per RetCode.  Codes not listed here fail the
# target, except service codes above 2000, which are transient server faults.
RET_CODE_POLICY: Mapping[int, Disposition] = {
    110: Disposition.RETRY,  # API timeout
    130: Disposition.RETRY,  # gateway error
    150: Disposition.RETRY,  # service unavailable
    153: Disposition.THROTTLE,  # rate limited
    160: Disposition.STOP,  # missing Action: a bug on our side
    161: Disposition.STOP,  # unknown Action: wrong endpoint
    170: Disposition.STOP,  # missing signature
    171: Disposition.STOP,  # bad signature: wrong private key
    172: Disposition.STOP,  # unknown user: wrong public key
    173: Disposition.STOP,  # (reserved for auth failures)
    174: Disposition.STOP,  # unknown token
    292: Disposition.FAIL_PROJECT,  # unknown project
    293: Disposition.FAIL_PROJECT,  # zone denied
    294: Disposition.FAIL_PROJECT,  # IP denied
    295: Disposition.FAIL_PROJECT,  # security lock
    296: Disposition.FAIL_PROJECT,
    297: Disposition.FAIL_PROJECT,
    298: Disposition.FAIL_PROJECT,
    299: Disposition.FAIL_PROJECT,  # IAM denied
}

# HTTP statuses other than 200.  429 throttles; these are transient; any other
# status fails the target.
TRANSIENT_HTTP_STATUSES = frozenset({408, 425, 500, 502, 503, 504})


def classify_ret_code(ret_code: int) -> Disposition:
    """Return what to do about a response with a non-zero ``RetCode``."""
    policy = RET_CODE_POLICY.get(ret_code)
    if policy is not None:
        return policy
    return Disposition.RETRY if ret_code > 2000 else Disposition.FAIL_TARGET


def classify_http_status(status: int) -> Disposition:
    """Return what to do about a response with an HTTP status other than 200."""
    if status == 429:
        return Disposition.THROTTLE
    if status in TRANSIENT_HTTP_STATUSES or status >= 500:
        return Disposition.RETRY
    return Disposition.FAIL_TARGET


class CrawlerError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(CrawlerError, ValueError):
    """The configuration or the command line is wrong; the message says how."""


class OutputError(CrawlerError, OSError):
    """The export or its checkpoint cannot be written."""


class ApiError(CrawlerError):
    """A call to the API failed.

    ``ret_code`` is the response's RetCode when the server answered with one,
    ``http_status`` the HTTP status when it was not 200.
    """

    def __init__(
        self,
        message: str,
        *,
        action: str,
        ret_code: int | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.action = action
        self.ret_code = ret_code
        self.http_status = http_status
        # Filled in by the client when it gives up on the call.
        self.params: dict[str, object] = {}
        self.attempts = 1
        self.retry_after_s: float | None = None  # set on a throttling answer

    def __str__(self) -> str:
        if self.ret_code is not None:
            return f"{self.action}: RetCode {self.ret_code}: {self.message}"
        if self.http_status is not None:
            return f"{self.action}: HTTP {self.http_status}: {self.message}"
        return f"{self.action}: {self.message}"


class TransientError(ApiError):
    """A failure worth retrying: the next attempt may well succeed."""


class ThrottledError(TransientError):
    """The server rate-limited the call (RetCode 153 or HTTP 429).

    ``retry_after_s`` is the server's ``Retry-After`` in seconds, if it sent
    a usable one.
    """


class RequestTimeoutError(TransientError, TimeoutError):
    """The server did not answer within the request timeout."""


class TargetError(ApiError):
    """A listing failed for good; the rest of the crawl goes on."""


class ProjectError(ApiError):
    """The project cannot be read (unknown, or access denied)."""


class FatalError(ApiError):
    """No call of this crawl can succeed; it stops at once."""


class AuthError(FatalError):
    """The keys were refused (RetCode 170 to 174)."""


class EndpointError(FatalError, ConnectionError):
    """The endpoint cannot be reached, or is not this API."""


def first_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception that brought a task group down.

    A task group wraps its tasks' errors in a group; callers want the error
    itself, and the first one that is not a cancellation (which the failing
    task caused in its siblings)."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending[:0] = exc.exceptions
        else:
            leaves.append(exc)
    for leaf in leaves:
        if not isinstance(leaf, asyncio.CancelledError):
            return leaf
    return leaves[0]


# What to do about each refusal of the keys.
_AUTH_HINTS = {
    171: "the private key does not fit the public key: check api.private_key "
    "or CRAWLER_PRIVATE_KEY",
    172: "the public key is unknown: check api.public_key or CRAWLER_PUBLIC_KEY",
    174: "the token is unknown: check the account's keys",
}

_ERROR_CLASS = {
    Disposition.RETRY: TransientError,
    Disposition.THROTTLE: ThrottledError,
    Disposition.FAIL_TARGET: TargetError,
    Disposition.FAIL_PROJECT: ProjectError,
    Disposition.STOP: FatalError,
}


def error_for(
    disposition: Disposition,
    message: str,
    *,
    action: str,
    ret_code: int | None = None,
    http_status: int | None = None,
) -> ApiError:
    """Build the exception that carries out ``disposition``."""
    cls = _ERROR_CLASS[disposition]
    if ret_code is not None and 170 <= ret_code <= 174:
        cls = AuthError
        if ret_code in _AUTH_HINTS:
            message = f"{message} ({_AUTH_HINTS[ret_code]})"
    return cls(message, action=action, ret_code=ret_code, http_status=http_status)
