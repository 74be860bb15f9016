"""The OpenAI-compatible HTTP surface: /v1/models and /v1/chat/completions over the same engine."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import openai_schema as schema
from gateway.auth import bearer_accepted
from gateway.config import Settings
from gateway.engine.types import (
    ChatImage,
    ChatMessage,
    Engine,
    EngineFull,
    GenerationRequest,
    SamplingParams,
)
from gateway.errors import ErrorCode, GatewayError
from gateway.fetch import image_url_bytes
from gateway.images import ImageLimits, decode_image
from gateway.openai_stream import EventStreamResponse, Reply, TurnEvents, turn_events
from gateway.url_guard import FetchPolicy

log = logging.getLogger("gateway.openai")

# Every GatewayError code's HTTP status and OpenAI error type, in one place.
STATUS_OF_CODE: dict[str, tuple[int, str]] = {
    ErrorCode.TOO_LARGE.value: (413, "invalid_request_error"),
    ErrorCode.CONTEXT_OVERFLOW.value: (400, "invalid_request_error"),
    ErrorCode.OVERLOADED.value: (503, "server_error"),
    ErrorCode.GENERATION.value: (500, "server_error"),
    ErrorCode.INTERNAL.value: (500, "server_error"),
}
_DEFAULT_STATUS = (400, "invalid_request_error")  # validation, bad_image, images_unsupported, fetch codes


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    @classmethod
    def from_gateway(cls, exc: GatewayError, param: str | None = None) -> ApiError:
        code = getattr(exc, "reason", exc.code.value)
        status, type_ = STATUS_OF_CODE.get(code, _DEFAULT_STATUS)
        return cls(status, exc.message, type_, code, param)

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "1"} if self.status == 503 else {}
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        body = schema.error_body(self.message, self.type, self.param, self.code)
        return JSONResponse(body, status_code=self.status, headers=headers)


def routes(fetch_policy: FetchPolicy | None = None) -> list[Route]:
    """The OpenAI routes; image URLs are fetched under `fetch_policy`, by default the settings' policy."""

    async def chat(request: Request) -> Response:
        policy = fetch_policy or FetchPolicy.from_settings(request.app.state.settings)
        return await _answering_errors(request, lambda: chat_completions(request, policy))

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
    except Exception:  # a bug: log it, tell the client nothing about it
        log.exception("%s %s failed", request.method, request.url.path)
        return ApiError(500, "internal server error", "server_error", ErrorCode.INTERNAL.value).response()


api_key_accepted = bearer_accepted


def _check_api_key(request: Request) -> None:
    api_key = request.app.state.settings.api_key
    if not api_key_accepted(request.headers.get("authorization"), api_key):
        raise ApiError(401, "missing or incorrect API key", "invalid_request_error", "invalid_api_key")


def _ready_engine(request: Request) -> Engine:
    engine: Engine | None = request.app.state.engine
    if engine is None:
        raise ApiError(503, "the model is still loading; try again shortly", "server_error", "model_loading")
    return engine


def _model_entry(model_id: str, parent: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": model_id, "object": "model", "created": 0, "owned_by": "gateway"}
    if parent is not None:
        entry["parent"] = parent  # an adapter over the base model
    return entry


def _model_entries(engine: Engine) -> list[dict[str, Any]]:
    return [_model_entry(engine.model_id)] + [_model_entry(a, engine.model_id) for a in engine.adapters]


async def list_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": _model_entries(_ready_engine(request))})


async def retrieve_model(request: Request) -> Response:
    model_id = request.path_params["model_id"]
    for entry in _model_entries(_ready_engine(request)):
        if entry["id"] == model_id:
            return JSONResponse(entry)
    raise _model_not_found(model_id)


def _model_not_found(model_id: str) -> ApiError:
    message = f"The model `{model_id[:200]}` does not exist or you do not have access to it."
    return ApiError(404, message, "invalid_request_error", "model_not_found", "model")


def _adapter_for(engine: Engine, model_id: str) -> str | None:
    """The adapter a model id selects; None for the base model."""
    if model_id == engine.model_id:
        return None
    if model_id in engine.adapters:
        return model_id
    raise _model_not_found(model_id)


async def chat_completions(request: Request, policy: FetchPolicy) -> Response:
    engine = _ready_engine(request)
    settings: Settings = request.app.state.settings
    try:
        chat = schema.decode_chat_request(await _read_body(request, settings.max_frame_bytes))
        prompt = schema.prompt_messages(chat)
    except schema.SchemaError as exc:
        raise ApiError(400, exc.message, param=exc.param, code=ErrorCode.INVALID_FIELD.value) from None
    adapter = _adapter_for(engine, chat.model)
    _check_limits(chat, prompt, settings, engine)
    messages = await _chat_messages(prompt, settings, policy, _image_slots(request))
    params = await _sampling_params(chat, messages, settings, engine)
    generation = GenerationRequest(messages=messages, params=params, adapter=adapter)
    events = TurnEvents()
    try:
        engine.submit(generation, events)
    except EngineFull:
        raise ApiError(503, "the server is at capacity; try again shortly", "server_error", "overloaded") from None
    stream = turn_events(events, generation.handle, request.receive)
    reply = Reply(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), chat.model)
    if chat.stream:
        return EventStreamResponse(stream, reply.sse(stream, chat.include_usage))
    return await reply.json(stream)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is over the {limit}-byte limit", code=ErrorCode.TOO_LARGE.value)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the request body is over the {limit}-byte limit", code=ErrorCode.TOO_LARGE.value)
    return bytes(body)


def _check_limits(
    chat: schema.ChatCompletionRequest, prompt: list[schema.PromptMessage], settings: Settings, engine: Engine
) -> None:
    def too_large(message: str, param: str) -> ApiError:
        return ApiError(413, message, code=ErrorCode.TOO_LARGE.value, param=param)

    if len(prompt) > 2 * settings.max_history_turns + 2:
        raise too_large(f"at most {2 * settings.max_history_turns + 2} messages", "messages")
    for message in prompt:
        if len(message.text) > settings.max_text_chars:
            raise too_large(f"a message's text is over the {settings.max_text_chars}-character limit", message.param)
    urls = [(url, message.param) for message in prompt for url in message.image_urls]
    if urls and not engine.vision:
        raise ApiError(400, "the served model is text-only", code=ErrorCode.IMAGES_UNSUPPORTED.value, param=urls[0][1])
    if len(urls) > settings.max_images_per_turn:
        raise too_large(f"at most {settings.max_images_per_turn} images per request", "messages")
    if len(chat.stop_strings) > settings.max_stop_strings:
        raise ApiError(400, f"at most {settings.max_stop_strings} stop strings", code=ErrorCode.INVALID_FIELD.value, param="stop")
    if (chat.max_new_tokens or 0) > settings.max_tokens_limit:
        limit = settings.max_tokens_limit
        raise ApiError(400, f"max_tokens is above the limit of {limit}", code=ErrorCode.INVALID_FIELD.value, param="max_tokens")


async def _chat_messages(
    prompt: list[schema.PromptMessage], settings: Settings, policy: FetchPolicy, slots: asyncio.Semaphore
) -> list[ChatMessage]:
    """Fetch and decode every image (concurrently, off the event loop) and build the engine's messages."""
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)

    async def load(url: str, index: int, param: str) -> ChatImage:
        async with slots:
            try:
                decoded = await asyncio.to_thread(lambda: decode_image(image_url_bytes(url, policy), limits, index))
            except GatewayError as exc:
                raise ApiError.from_gateway(exc, param) from None
        return ChatImage(pixels=decoded.pixels, width=decoded.width, height=decoded.height)

    urls = [(url, message.param) for message in prompt for url in message.image_urls]
    images = iter(await asyncio.gather(*(load(url, i, param) for i, (url, param) in enumerate(urls))))
    return [ChatMessage(m.role, m.text, tuple(next(images) for _ in m.image_urls)) for m in prompt]


def _image_slots(request: Request) -> asyncio.Semaphore:
    """How many images may load at once: a URL fetch holds a worker thread for up to its deadline."""
    state = request.app.state
    if getattr(state, "openai_image_slots", None) is None:
        state.openai_image_slots = asyncio.Semaphore(state.settings.image_fetch_concurrency)
    slots: asyncio.Semaphore = state.openai_image_slots
    return slots


async def _sampling_params(
    chat: schema.ChatCompletionRequest, messages: list[ChatMessage], settings: Settings, engine: Engine
) -> SamplingParams:
    """The request's options over the server's defaults; max_tokens defaults to what the context has room for."""
    prompt_tokens = await asyncio.to_thread(engine.count_prompt_tokens, messages)
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
    )
