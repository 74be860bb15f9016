"""The OpenAI-compatible HTTP surface: /v1/models and /v1/chat/completions over the same engine."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.config import Settings
from gateway.core.request import ConversationRequest, RequestMessage, SamplingOptions
from gateway.core.runtime import runtime_of
from gateway.core.sampling import OPTION_FIELDS
from gateway.core.stateless import start_conversation
from gateway.core.tracing import TurnTrace
from gateway.core.turns import TurnService
from gateway.edge.auth import bearer_accepted, offered_credentials
from gateway.edge.tokens import is_token
from gateway.engine.contract import Engine
from gateway.errors import ErrorCode, GatewayError
from gateway.openai import schema, tokens
from gateway.openai.errors import ApiError
from gateway.openai.stream import EventStreamResponse, Reply, ReplyEvents, turn_events

log = logging.getLogger("gateway.openai.routes")


def routes() -> list[Route]:
    """The OpenAI routes; image URLs are fetched under the turn service's policy."""

    async def chat(request: Request) -> Response:
        return await _answering_errors(request, lambda: chat_completions(request))

    async def models(request: Request) -> Response:
        return await _answering_errors(request, lambda: list_models(request))

    async def model(request: Request) -> Response:
        return await _answering_errors(request, lambda: retrieve_model(request))

    async def token(request: Request) -> Response:
        return await _answering_errors(request, lambda: _mint_token(request))

    return [
        Route("/v1/realtime/tokens", token, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", model, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ]


async def _answering_errors(
    request: Request, endpoint: Callable[[], Awaitable[Response]], check: Callable[[Request], None] | None = None
) -> Response:
    """The endpoint's answer, or its error in OpenAI's shape; the API key (or `check`'s credential) first."""
    try:
        (check or _check_api_key)(request)
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


async def _mint_token(request: Request) -> Response:
    """A scoped token for a browser (gateway/openai/tokens.py); the API key was checked like any /v1 request's."""
    body = await _read_body(request, tokens.MAX_BODY_BYTES)
    served, runtime = _ready_turns(request).models, runtime_of(request.app)
    answer = tokens.minted(body, runtime.settings, served, time.time())
    runtime.metrics.tokens_minted.inc()
    return JSONResponse(answer)


def _check_api_key(request: Request) -> None:
    api_key, authorization = runtime_of(request.app).settings.api_key, request.headers.get("authorization")
    if not api_key_accepted(authorization, api_key):
        scoped = any(is_token(credential) for credential in offered_credentials(authorization, ()))
        message = SCOPED_ON_HTTP if scoped else "missing or incorrect API key"
        raise ApiError(401, message, "invalid_request_error", "invalid_api_key")


# Why /v1 takes no scoped token: each of its limits is a connection's, and a stateless request has none (README).
SCOPED_ON_HTTP = "a scoped token opens a WebSocket session only; /v1 takes the API key"


def _ready_turns(request: Request) -> TurnService:
    turns = runtime_of(request.app).turns
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
    trace = turns.tracer.turn(request.headers.get("traceparent"), "http")
    with trace.opened():
        return await _chat_completion(request, turns, trace)


async def _chat_completion(request: Request, turns: TurnService, trace: TurnTrace) -> Response:
    trace.phase("admission")
    settings: Settings = runtime_of(request.app).settings
    try:
        chat = schema.decode_chat_request(await _read_body(request, settings.max_frame_bytes))
        prompt = schema.prompt_messages(chat)
    except schema.SchemaError as exc:
        raise ApiError(400, exc.message, param=exc.param, code=ErrorCode.INVALID_FIELD.value) from None
    try:
        turns.adapter_for(chat.model)
    except GatewayError:
        raise _model_not_found(chat.model, turns.engine) from None
    conversation = ConversationRequest([_message(m) for m in prompt], sampling_options(chat))
    quota = turns.grammars.http_quota(request.client.host if request.client else "unknown")
    events = ReplyEvents()
    handle = await start_conversation(turns, conversation, events, quota, trace)
    stream = turn_events(events, handle, request.receive)
    reply = Reply(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), chat.model)
    if chat.stream:
        return EventStreamResponse(stream, reply.sse(stream, chat.include_usage))
    return await reply.json(stream)


def sampling_options(chat: schema.ChatCompletionRequest) -> SamplingOptions:
    """The body's options in the request type both front ends share. Those the body names as the request type does
    pass as they are (a new one needs only its field in the body's schema); two change shape on the way."""
    same = {name: getattr(chat, name) for name in SAME_OPTIONS}
    return SamplingOptions(**same, max_tokens=chat.max_new_tokens, stop=list(chat.stop_strings) or None)


SAME_OPTIONS = (set(OPTION_FIELDS) & set(schema.ChatCompletionRequest.__struct_fields__)) - {"max_tokens", "stop"}


def _message(message: schema.PromptMessage) -> RequestMessage:
    return RequestMessage(
        message.role,
        message.text,
        message.image_urls,
        message.param,
        message.tool_calls,
        message.tool_call_id,
        message.video_urls,
    )


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
