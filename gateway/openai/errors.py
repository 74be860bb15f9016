"""Errors in OpenAI's shape: the core's codes and fields mapped to an HTTP status, a `type`, a `code` and a `param`."""

from __future__ import annotations

import math

from starlette.responses import JSONResponse

from gateway.core.sampling import OPTION_FIELDS
from gateway.errors import HTTP_STATUS, ErrorCode, GatewayError, RetryLater
from gateway.openai import schema

# Where OpenAI has a code of its own: messages that leave the completion no room in the context window.
OPENAI_CODES: dict[tuple[ErrorCode, str | None], str] = {(ErrorCode.CONTEXT_OVERFLOW, "messages"): "context_length_exceeded"}
OPTION_PARAMS = frozenset(OPTION_FIELDS)


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.retry_after_ms = retry_after_ms

    @classmethod
    def from_gateway(cls, exc: GatewayError) -> ApiError:
        """Through the one status table in errors.py, in OpenAI's terms: the field at fault is the `param`, a
        request parameter over a count limit is a 400 (only a message's payload is a 413), OpenAI's own code
        where it has one, and a fetch error's finer reason as the code."""
        status = HTTP_STATUS[exc.code]
        if status == 413 and exc.field in OPTION_PARAMS:
            status = 400
        code = getattr(exc, "reason", None) or OPENAI_CODES.get((exc.code, exc.field), exc.code.value)
        retry_after_ms = exc.retry_after_ms if isinstance(exc, RetryLater) else None
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return cls(status, exc.message, kind, code, exc.field, retry_after_ms)

    def response(self) -> JSONResponse:
        headers = {}
        if self.retry_after_ms is not None or self.status == 503:
            headers["Retry-After"] = str(max(1, math.ceil((self.retry_after_ms or 1000) / 1000)))
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        body = schema.error_body(self.message, self.type, self.param, self.code)
        return JSONResponse(body, status_code=self.status, headers=headers)
