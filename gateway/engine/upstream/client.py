"""One replica's HTTP API, async on the event loop: models, tokenize, and streamed chat completions."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2 as httpx

from gateway.engine.upstream import wire
from gateway.engine.upstream.stream import SseDecoder, StreamEvent

logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per request drowns the gateway's own logs


class UpstreamError(Exception):
    """The upstream refused or failed a request; `retryable` says whether another replica may succeed."""

    retryable = False


class Unavailable(UpstreamError):
    """Could not connect, timed out, or answered 5xx: the replica is likely down."""

    retryable = True


class Overloaded(UpstreamError):
    """429 or 503: the replica is up but full; try another, or later."""

    retryable = True

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ContextOverflow(UpstreamError):
    """The prompt and max_tokens do not fit the upstream's context window."""


class Rejected(UpstreamError):
    """Any other 4xx: the request itself is wrong for this upstream."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def timeouts(connect_s: float, read_s: float) -> httpx.Timeout:
    return httpx.Timeout(connect=connect_s, read=read_s, write=read_s, pool=connect_s)


def classify(status: int, body: bytes, retry_after: str | None) -> UpstreamError:
    """An error response as the failure it means."""
    return classify_message(status, wire.error_message(body), retry_after)


def classify_event(event: StreamEvent) -> UpstreamError:
    """An error chunk inside a stream (the response itself said 200) as the failure it means."""
    message = event.error or "error"
    return classify_message(wire.stream_error_status(event.error_status, message), message, None)


def classify_message(status: int, message: str, retry_after: str | None) -> UpstreamError:
    if status in (429, 503):
        return Overloaded(message, wire.retry_after_s(retry_after, time.time()))
    if status >= 500:
        return Unavailable(f"upstream answered {status}: {message}")
    if wire.is_context_error(status, message):
        return ContextOverflow(message)
    return Rejected(f"upstream answered {status}: {message}", status)


class ReplicaClient:
    """Requests to one replica over a shared async client (one connection pool for every replica)."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, api_key: str | None = None) -> None:
        self.http = http
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def post_json(self, path: str, body: dict[str, Any]) -> Any:
        return (await self.post(path, body)).json()

    async def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """A 200 answer (vLLM's adapter endpoints answer plain text), else the failure it means."""
        try:
            response = await self.http.post(self.base_url + path, json=body, headers=self.headers)
        except httpx.TransportError as exc:
            raise Unavailable(f"{type(exc).__name__}") from exc
        if response.status_code != 200:
            raise classify(response.status_code, response.content, response.headers.get("retry-after"))
        return response

    async def model_ids(self) -> set[str]:
        """The model ids it serves now, its LoRA adapters among them."""
        try:
            response = await self.http.get(self.base_url + "/v1/models", headers=self.headers)
        except httpx.TransportError as exc:
            raise Unavailable(f"{type(exc).__name__}") from exc
        if response.status_code != 200:
            raise classify(response.status_code, response.content, response.headers.get("retry-after"))
        return {str(entry.get("id")) for entry in response.json().get("data", [])}

    async def healthy(self, timeout_s: float) -> bool | None:
        """None when it took the connection but did not answer in time: a replica busy streaming to many
        clients can be slow to answer /health, and is no reason to fail the turns it would take."""
        try:
            response = await self.http.get(self.base_url + "/health", headers=self.headers, timeout=timeout_s)
        except httpx.ConnectTimeout:
            return False
        except httpx.TimeoutException:
            return None
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def stream_chat(
        self, body: dict[str, Any], gap_s: float, traceparent: str | None = None
    ) -> AsyncIterator[list[StreamEvent]]:
        """The completion's chunks, in the batches the network delivers them (a server that runs many
        sequences writes one chunk each per step, and they often arrive together). Leaving the iteration
        early (cancel, deadline) closes the response, and with it the connection: vLLM aborts the
        request when its client goes away."""
        headers = self.headers | {"traceparent": traceparent} if traceparent else self.headers  # the turn's trace goes on
        request = self.http.build_request(
            "POST", self.base_url + "/v1/chat/completions", json=body, headers=headers, timeout=self._read(gap_s)
        )
        try:
            response = await self.http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise Unavailable(type(exc).__name__) from exc
        try:
            if response.status_code != 200:
                raise classify(response.status_code, await response.aread(), response.headers.get("retry-after"))
            decoder = SseDecoder()
            async for data in response.aiter_bytes():
                events = decoder.feed(data)
                if events:
                    yield events
        except httpx.TransportError as exc:
            raise Unavailable(type(exc).__name__) from exc
        finally:
            await response.aclose()

    def _read(self, gap_s: float) -> httpx.Timeout:
        connect = self.http.timeout.connect
        return timeouts(connect if connect is not None else gap_s, gap_s)
