"""Error codes: each with its wire code and, where fatal, the WebSocket close code it maps to."""

from __future__ import annotations

import enum


class CloseCode(enum.IntEnum):
    """WebSocket close codes the gateway uses (RFC 6455 section 7.4)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    # Application codes (4000-4999), each preceded by a `closing` frame when it can still be sent.
    SLOW_CONSUMER = 4000  # the client stopped reading; its turn was stopped
    IDLE_TIMEOUT = 4001  # no frames and no running turn for idle_timeout_s
    FLOODING = 4002  # kept sending far past the rate limit after `rate_limited` errors


class ErrorCode(str, enum.Enum):
    """Stable codes carried by `error` frames; clients may switch on them."""

    BAD_FRAME = "bad_frame"  # not decodable: invalid msgpack/JSON, not a map
    UNKNOWN_TYPE = "unknown_type"  # `type` missing or not a known client frame
    INVALID_FIELD = "invalid_field"  # unknown, missing, mistyped or out-of-range field
    BAD_IMAGE = "bad_image"  # attachment is not a decodable image of an allowed format
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
    GENERATION = "generation"  # the model failed while generating
    INTERNAL = "internal"  # a bug; details are logged, never sent


class GatewayError(Exception):
    """A recoverable problem with one client frame, answered with an `error` frame."""

    def __init__(self, code: ErrorCode, message: str, frame_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.frame_id = frame_id
