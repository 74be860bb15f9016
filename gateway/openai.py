"""The OpenAI-compatible HTTP surface: /v1/models and /v1/chat/completions over the same engine."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import openai_schema as schema
from gateway.auth import bearer_accepted
from gateway.config import Settings
from gateway.engine.types import ChatImage, ChatMessage, Engine, Grammar, SamplingParams
from gateway.errors import HTTP_STATUS, ErrorCode, GatewayError, RetryLater
from gateway.grammar_pool import CompileQuota
from gateway.openai_stream import EventStreamResponse, Reply, TurnEvents, turn_events
from gateway.tools.plan import ToolPlan, plan_tools
from gateway.turns import TurnService

log = logging.getLogger("gateway.openai")


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
    def from_gateway(cls, exc: GatewayError, param: str | None = None) -> ApiError:
        """Through the one status table in errors.py; a fetch error keeps its finer reason as the code."""
        code = getattr(exc, "reason", exc.code.value)
        status = HTTP_STATUS[exc.code]
        retry_after_ms = exc.retry_after_ms if isinstance(exc, RetryLater) else None
        return cls(status, exc.message, "server_error" if status >= 500 else "invalid_request_error", code, param, retry_after_ms)

    def response(self) -> JSONResponse:
        headers = {}
        if self.retry_after_ms is not None or self.status == 503:
            headers["Retry-After"] = str(max(1, math.ceil((self.retry_after_ms or 1000) / 1000)))
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        body = schema.error_body(self.message, self.type, self.param, self.code)
        return JSONResponse(body, status_code=self.status, headers=headers)


def routes() -> list[Route]:
    """The OpenAI routes; image URLs are fetched under the turn service's policy."""

    async def chat(request: Request) -> Response:
        return await _answering_errors(request, lambda: chat_completions(request))

    async def models(request: Request) -> Response:
        return await _answering_errors(request, lambda: list_models(request))

    async def model(request: Request) -> Response:
        return await _answering_errors(request, lambda: retrieve_model(request))

    return [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", model, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ]


async def _answering_errors(request: Request, endpoint: Callable[[], Awaitable[Response]]) -> Response:
    try:
        _check_api_key(request)
        return await endpoint()
    except ApiError as exc:
        return exc.response()
    except GatewayError as exc:
        return ApiError.from_gateway(exc).response()
    except ClientDisconnect:  # the client left mid-body (or its body timed out): nobody reads an answer
        log.debug("%s %s: the client disconnected before its body arrived", request.method, request.url.path)
        return Response(status_code=400)
    except Exception:  # a bug: log it, tell the client nothing about it
        log.exception("%s %s failed", request.method, request.url.path)
        return ApiError(500, "internal server error", "server_error", ErrorCode.INTERNAL.value).response()


api_key_accepted = bearer_accepted


def _check_api_key(request: Request) -> None:
    api_key = request.app.state.settings.api_key
    if not api_key_accepted(request.headers.get("authorization"), api_key):
        raise ApiError(401, "missing or incorrect API key", "invalid_request_error", "invalid_api_key")


def _ready_turns(request: Request) -> TurnService:
    turns: TurnService | None = request.app.state.turns
    if turns is None:
        raise ApiError(503, "the model is still loading; try again shortly", "server_error", "model_loading")
    return turns


def _model_entry(model_id: str, parent: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": model_id, "object": "model", "created": 0, "owned_by": "gateway"}
    if parent is not None:
        entry["parent"] = parent  # an adapter over the base model
    return entry


def _model_entries(engine: Engine) -> list[dict[str, Any]]:
    return [_model_entry(engine.model_id)] + [_model_entry(a, engine.model_id) for a in engine.adapters]


async def list_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": _model_entries(_ready_turns(request).engine)})


async def retrieve_model(request: Request) -> Response:
    model_id = request.path_params["model_id"]
    engine = _ready_turns(request).engine
    for entry in _model_entries(engine):
        if entry["id"] == model_id:
            return JSONResponse(entry)
    raise _model_not_found(model_id, engine)


def _model_not_found(model_id: str, engine: Engine) -> ApiError:
    served = ", ".join(f"`{entry['id']}`" for entry in _model_entries(engine))
    message = f"The model `{model_id[:200]}` does not exist or you do not have access to it. This server has {served}."
    return ApiError(404, message, "invalid_request_error", "model_not_found", "model")


async def chat_completions(request: Request) -> Response:
    turns = _ready_turns(request)
    settings: Settings = request.app.state.settings
    try:
        chat = schema.decode_chat_request(await _read_body(request, settings.max_frame_bytes))
        prompt = schema.prompt_messages(chat)
    except schema.SchemaError as exc:
        raise ApiError(400, exc.message, param=exc.param, code=ErrorCode.INVALID_FIELD.value) from None
    try:
        adapter = turns.adapter_for(chat.model)
    except GatewayError:
        raise _model_not_found(chat.model, turns.engine) from None
    _check_limits(chat, prompt, turns)
    quota = turns.grammars.http_quota(request.client.host if request.client else "unknown")
    tools = await _tool_plan(chat, turns, quota)
    messages = await _chat_messages(prompt, turns)
    params = await _sampling_params(chat, messages, turns, tools, await _grammar(chat, turns, quota))
    events = TurnEvents()
    handle = await turns.start_stateless(messages, params, adapter, events, tools)
    stream = turn_events(events, handle, request.receive)
    reply = Reply(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), chat.model)
    if chat.stream:
        return EventStreamResponse(stream, reply.sse(stream, chat.include_usage))
    return await reply.json(stream)


async def _read_body(request: Request, limit: int) -> bytes:
    # A browser sends text/plain (and form types) cross-site without a preflight; JSON needs one.
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(415, "the body must be JSON sent as Content-Type: application/json", code="unsupported_media_type")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is over the {limit}-byte limit", code=ErrorCode.TOO_LARGE.value)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the request body is over the {limit}-byte limit", code=ErrorCode.TOO_LARGE.value)
    return bytes(body)


def _check_limits(chat: schema.ChatCompletionRequest, prompt: list[schema.PromptMessage], turns: TurnService) -> None:
    """The turn service's limits, with OpenAI's `param` named where a field is at fault."""
    settings = turns.settings
    if len(prompt) > 2 * settings.max_history_turns + 2:
        raise ApiError(
            413, f"at most {2 * settings.max_history_turns + 2} messages", code=ErrorCode.TOO_LARGE.value, param="messages"
        )
    for message in prompt:
        if len(message.text) > settings.max_text_chars:
            message_text = f"a message's text is over the {settings.max_text_chars}-character limit"
            raise ApiError(413, message_text, code=ErrorCode.TOO_LARGE.value, param=message.param)
    urls = [message.param for message in prompt for _ in message.image_urls]
    try:
        turns.check_images(len(urls))
    except GatewayError as exc:
        raise ApiError.from_gateway(exc, urls[0] if exc.code == ErrorCode.IMAGES_UNSUPPORTED else "messages") from None
    if len(chat.stop_strings) > settings.max_stop_strings:
        raise ApiError(400, f"at most {settings.max_stop_strings} stop strings", code=ErrorCode.INVALID_FIELD.value, param="stop")
    if (chat.max_new_tokens or 0) > settings.max_tokens_limit:
        limit = settings.max_tokens_limit
        raise ApiError(400, f"max_tokens is above the limit of {limit}", code=ErrorCode.INVALID_FIELD.value, param="max_tokens")


async def _chat_messages(prompt: list[schema.PromptMessage], turns: TurnService) -> list[ChatMessage]:
    """Fetch and check every image through the turn service (its pools, its fetch slots) and build
    the engine's messages."""

    async def load(url: str, index: int, param: str) -> ChatImage:
        try:
            return await turns.load_url(url, index)
        except GatewayError as exc:
            raise ApiError.from_gateway(exc, param) from None

    urls = [(url, message.param) for message in prompt for url in message.image_urls]
    images = iter(await asyncio.gather(*(load(url, i, param) for i, (url, param) in enumerate(urls))))
    return [ChatMessage(m.role, m.text, tuple(next(images) for _ in m.image_urls), m.tool_calls, m.tool_call_id) for m in prompt]


async def _tool_plan(chat: schema.ChatCompletionRequest, turns: TurnService, quota: CompileQuota) -> ToolPlan:
    try:
        plan = plan_tools(chat.tools, chat.tool_choice, turns.tool_syntax)
        await turns.grammars.checked(plan.grammar, "tools", quota)
        return plan
    except GatewayError as exc:
        raise ApiError.from_gateway(exc, "tool_choice" if "tool_choice" in exc.message else "tools") from None


async def _sampling_params(
    chat: schema.ChatCompletionRequest, messages: list[ChatMessage], turns: TurnService, tools: ToolPlan, grammar: Grammar | None
) -> SamplingParams:
    """The request's options over the server's defaults; max_tokens defaults to what the context has room for."""
    settings, engine = turns.settings, turns.engine
    prompt_tokens = await turns.count(messages, tools)
    room = engine.context_tokens - prompt_tokens
    requested = chat.max_new_tokens
    max_tokens = requested if requested is not None else min(settings.default_max_tokens, room)
    if max_tokens > room or max_tokens < 1:
        message = (
            f"This model's maximum context length is {engine.context_tokens} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the completion)."
        )
        raise ApiError(400, message, code="context_length_exceeded", param="messages")
    return SamplingParams(
        temperature=chat.temperature if chat.temperature is not None else settings.default_temperature,
        top_p=chat.top_p if chat.top_p is not None else settings.default_top_p,
        top_k=chat.top_k if chat.top_k is not None else settings.default_top_k,
        max_tokens=max_tokens,
        repetition_penalty=(
            chat.repetition_penalty if chat.repetition_penalty is not None else settings.default_repetition_penalty
        ),
        stop=chat.stop_strings,
        seed=chat.seed,
        grammar=grammar,
    )


async def _grammar(chat: schema.ChatCompletionRequest, turns: TurnService, quota: CompileQuota) -> Grammar | None:
    """The response_format's grammar, compiled on the turn service's grammar pool."""
    try:
        return await turns.grammars.response_grammar(chat.response_format, quota)
    except GatewayError as exc:
        raise ApiError.from_gateway(exc, "response_format") from None
