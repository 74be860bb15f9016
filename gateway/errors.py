"""Error codes: each with its wire code and, where fatal, the WebSocket close code it maps to."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator


class CloseCode(enum.IntEnum):
    """WebSocket close codes the gateway sends itself (RFC 6455 section 7.4); the WebSocket library
    sends 1007 and 1009 on its own, and uvicorn 1012 when it stops without draining."""

    GOING_AWAY = 1001  # server shutting down
    INTERNAL_ERROR = 1011
    # Application codes (4000-4999), each preceded by a `closing` frame when it can still be sent.
    SLOW_CONSUMER = 4000  # the client stopped reading; its turn was stopped
    IDLE_TIMEOUT = 4001  # no frames and no running turn for idle_timeout_s
    FLOODING = 4002  # kept sending far past the rate limit after `rate_limited` errors
    TAKEN_OVER = 4003  # another connection resumed this session
    TOKEN_EXPIRED = 4004  # the scoped token's session duration is over (after `closing` with a grace)


class ErrorCode(str, enum.Enum):
    """Stable codes carried by `error` frames; clients may switch on them."""

    BAD_FRAME = "bad_frame"  # not decodable: invalid msgpack/JSON, not a map
    UNKNOWN_TYPE = "unknown_type"  # `type` missing or not a known client frame
    INVALID_FIELD = "invalid_field"  # unknown, missing, mistyped or out-of-range field
    BAD_IMAGE = "bad_image"  # attachment is not a decodable image of an allowed format
    BAD_VIDEO = "bad_video"  # video attachment is not a decodable MP4, WebM or GIF of an allowed codec
    TOO_LARGE = "too_large"  # text, attachment or count above a limit
    IMAGES_UNSUPPORTED = "images_unsupported"  # the served model is text-only
    FORBIDDEN_URL = "forbidden_url"  # image URL refused by the SSRF guard (scheme, credentials, address)
    FETCH_FAILED = "fetch_failed"  # image URL unreachable, timed out, HTTP error, too many redirects
    BUSY = "busy"  # a turn is already running on this connection
    NOT_FOUND = "not_found"  # cancel for a turn id that is not running
    CONTEXT_OVERFLOW = "context_overflow"  # one turn alone exceeds the context window
    OVERLOADED = "overloaded"  # the engine's queue is full
    RATE_LIMITED = "rate_limited"  # too many frames or turns; retry after `retry_after_ms`
    SHUTTING_DOWN = "shutting_down"  # the server is draining; no new turns
    TOKEN_LIMIT = "token_limit"  # the scoped token that opened the connection does not allow this
    RESUME_FAILED = "resume_failed"  # wrong token, or an unknown or expired session (never says which)
    STORE_UNAVAILABLE = "store_unavailable"  # the session store failed or did not answer: resume/forget later
    BAD_ADAPTER = "bad_adapter"  # POST /v1/adapters: the path holds no LoRA adapter this model can load
    GENERATION = "generation"  # the model failed while generating
    INTERNAL = "internal"  # a bug; details are logged, never sent


class GatewayError(Exception):
    """A recoverable problem with what a client asked: each front end answers it in its own terms (an `error`
    frame, an HTTP status). `field` names the request field at fault, in the core's names (`tools`,
    `response_format`, `max_tokens`, `images[2]`...), for a front end to translate."""

    def __init__(self, code: ErrorCode, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class ConnectionClosing(Exception):
    """Raised inside a connection to end it with a close code of ours."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class RetryLater(GatewayError):
    """Refused for now (`overloaded`, `rate_limited`): the client may retry after `retry_after_ms`."""

    def __init__(self, code: ErrorCode, message: str, retry_after_ms: int, *, field: str | None = None) -> None:
        super().__init__(code, message, field=field)
        self.retry_after_ms = retry_after_ms


# Every error code's HTTP status, for the front ends that speak HTTP.
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_FRAME: 400,
    ErrorCode.UNKNOWN_TYPE: 400,
    ErrorCode.INVALID_FIELD: 400,
    ErrorCode.BAD_IMAGE: 400,
    ErrorCode.BAD_VIDEO: 400,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.IMAGES_UNSUPPORTED: 400,
    ErrorCode.FORBIDDEN_URL: 400,
    ErrorCode.FETCH_FAILED: 400,
    ErrorCode.BUSY: 409,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONTEXT_OVERFLOW: 400,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.TOKEN_LIMIT: 403,
    ErrorCode.RESUME_FAILED: 400,
    ErrorCode.STORE_UNAVAILABLE: 503,
    ErrorCode.BAD_ADAPTER: 400,
    ErrorCode.GENERATION: 500,
    ErrorCode.INTERNAL: 500,
}


def one_line(exc: BaseException) -> str:
    """An exception as one line: its message's first line, or its type's name when it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@contextlib.contextmanager
def naming(field: str) -> Iterator[None]:
    """A refusal raised within names `field`, unless it already names a finer one."""
    try:
        yield
    except GatewayError as exc:
        exc.field = exc.field or field
        raise
